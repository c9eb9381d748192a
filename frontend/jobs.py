"""Jobs as the frontend sees them, read straight from storage: the manifest plus which objects exist.

Nothing here draws; the views turn these into pixels. An image counts as done the moment its
object is listed, even if the manifest saying so is still being written.
"""

import json
from dataclasses import dataclass
from datetime import datetime, timezone

from backend.contract import TERMINAL, is_job_id, job_prefix, manifest_key, rollup, upscale_key
from backend.storage import ObjectMissing, Storage, StorageError

__all__ = ["ImageView", "JobView", "is_job_id", "load_job", "recent_jobs", "ticket_view", "upscale_key"]
LABELS = {"queued": "Waiting", "running": "Generating", "succeeded": "Done", "failed": "Failed",
          "canceled": "Canceled"}


@dataclass
class ImageView:
    index: int
    key: str
    seed: int | None
    status: str
    error: str | None = None
    upscale_status: str | None = None   # None: never asked; else queued/running/succeeded/failed
    upscale_error: str | None = None
    upscaled: bool = False              # the 4x object exists
    finished_at: str | None = None

    @property
    def done(self) -> bool:
        return self.status == "succeeded"

    @property
    def label(self) -> str:
        return LABELS.get(self.status, self.status)

    @property
    def upscaling(self) -> bool:
        return self.upscale_status in ("queued", "running") and not self.upscaled


@dataclass
class JobView:
    id: str
    status: str
    prompt: str
    created_at: str | None
    updated_at: str | None
    width: int
    height: int
    images: list[ImageView]
    error: str | None = None
    product: str | None = None
    template: str | None = None

    @property
    def terminal(self) -> bool:
        return all(img.status in TERMINAL for img in self.images)

    @property
    def needs_polling(self) -> bool:
        return not self.terminal or any(img.upscaling for img in self.images)

    @property
    def done_count(self) -> int:
        return sum(img.done for img in self.images)

    def elapsed_s(self, now: datetime | None = None) -> float:
        """Creation to now while running; once terminal, to the last image's end (not `updated_at`,
        which a later upscale moves on)."""
        start = parse_time(self.created_at)
        end = self.finished_at() if self.terminal else (now or datetime.now(timezone.utc))
        return max(0.0, (end - start).total_seconds()) if start and end else 0.0

    def finished_at(self) -> datetime | None:
        ends = [t for t in (parse_time(img.finished_at) for img in self.images) if t]
        return max(ends) if ends else parse_time(self.updated_at)


def parse_time(value: str | None) -> datetime | None:
    if not value or not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def read_manifest(storage: Storage, job_id: str) -> dict | None:
    """The job's manifest, or None if there is no job of that id (yet)."""
    try:
        manifest = json.loads(storage.get(manifest_key(job_id)))
    except ObjectMissing:
        return None
    except ValueError as e:
        raise StorageError(f"the manifest of job {job_id} is not valid JSON: {e}") from None
    if not isinstance(manifest, dict):
        raise StorageError(f"the manifest of job {job_id} is not a JSON object")
    return manifest


def job_view(manifest: dict, present: set[str] | None = None) -> JobView:
    """Merge the manifest with the listing of the job's folder (`present`: keys that exist). A manifest
    of another shape raises StorageError, like one that cannot be read."""
    try:
        return _job_view(manifest, present or set())
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        job_id = manifest.get("id", "?") if isinstance(manifest, dict) else "?"
        raise StorageError(f"the manifest of job {job_id} is malformed ({type(e).__name__}: {e})") from None


def _job_view(manifest: dict, present: set[str]) -> JobView:
    spec = manifest.get("spec") or {}
    images = []
    for img in manifest.get("images", []):
        up = img.get("upscale") or {}
        status = "succeeded" if img["key"] in present else img.get("status", "queued")
        x4 = up.get("key") or upscale_key(img["key"])
        images.append(ImageView(index=int(img["index"]), key=str(img["key"]), seed=img.get("seed"), status=status,
                                error=_text(img.get("error")), upscale_status=up.get("status"),
                                upscale_error=_text(up.get("error")), upscaled=x4 in present,
                                finished_at=img.get("finished_at")))
    view = JobView(id=str(manifest["id"]), status=str(manifest.get("status", "queued")),
                   prompt=str(spec.get("prompt") or ""),
                   created_at=manifest.get("created_at"), updated_at=manifest.get("updated_at"),
                   width=int(spec.get("width") or 512), height=int(spec.get("height") or 512), images=images,
                   error=_text(manifest.get("error")), product=_text(spec.get("product")),
                   template=_text(spec.get("template")))
    if view.terminal and view.status not in TERMINAL:  # objects landed before the manifest caught up
        view.status = rollup(i.status for i in images).value
    return view


def _text(value) -> str | None:
    return None if value is None else str(value)


def ticket_view(ticket: dict, spec: dict) -> JobView:
    """What to show between the 202 and the first manifest read: every image waiting."""
    images = [ImageView(index=i["index"], key=i["key"], seed=i.get("seed"), status="queued") for i in ticket["images"]]
    return JobView(id=ticket["id"], status="queued", prompt=spec.get("prompt", ""), created_at=None,
                   updated_at=None, width=spec.get("width") or 512, height=spec.get("height") or 512, images=images)


def load_job(storage: Storage, job_id: str) -> JobView | None:
    """One GET of the manifest and one LIST of the job's folder."""
    manifest = read_manifest(storage, job_id)
    if manifest is None:
        return None
    return job_view(manifest, set(storage.list_files(job_prefix(job_id))))


def recent_jobs(storage: Storage, limit: int) -> list[JobView]:
    """The newest jobs first (ids sort by creation time), skipping folders without a readable manifest."""
    ids = [i for i in storage.list_dirs("jobs/") if is_job_id(i)]
    found = []
    for job_id in sorted(ids, reverse=True):
        try:
            manifest = read_manifest(storage, job_id)
            if manifest is not None:
                found.append(job_view(manifest))
        except StorageError:
            continue  # one unreadable job does not hide the others
        if len(found) >= limit:
            break
    return found


def format_elapsed(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
