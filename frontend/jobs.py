"""Jobs as the frontend sees them, read straight from storage: the manifest plus which objects exist.

Nothing here draws; the views turn these into pixels. An image counts as done the moment its
object is listed, even if the manifest saying so is still being written.
"""

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import islice

from backend.contract import (
    INDEX_BUILT,
    INDEX_JOBS,
    TERMINAL,
    is_job_id,
    job_id_of_index_key,
    job_prefix,
    manifest_key,
    newest_first_key,
    rollup,
    upscale_key,
)
from backend.storage import ObjectMissing, Storage, StorageError

__all__ = ["ImageView", "JobPage", "JobView", "is_job_id", "load_job", "recent_jobs", "ticket_view", "upscale_key"]
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
    started_at: str | None = None
    progress: tuple[int, int] | None = None  # (step, steps) while it runs
    preview_key: str | None = None      # a preview JPEG that exists now (the final PNG is what counts)
    missing: bool = False               # made, but its object is gone from storage (the folder was listed)
    worker: str | None = None           # the GPU that made it (speed.gpu_seconds: a batch counts once)

    @property
    def done(self) -> bool:
        return self.status == "succeeded" and not self.missing

    @property
    def label(self) -> str:
        return "Missing" if self.missing else LABELS.get(self.status, self.status)

    @property
    def upscaling(self) -> bool:
        return self.upscale_status in ("queued", "running") and not self.upscaled

    def eta_s(self, now: datetime | None = None, since: tuple[int, str] | None = None,
              updated_at: str | None = None) -> float | None:
        """Seconds left at the speed measured so far; None before a step is done. With `since` (a step and the
        manifest time it was first seen at) and the manifest's `updated_at` now, the speed between the two: the
        first steps' setup (the prompt encoded, the model warmed) no longer stretches the whole estimate. Else
        from `started_at`, setup included."""
        now = now or datetime.now(timezone.utc)
        start = parse_time(self.started_at)
        if self.status != "running" or not self.progress or not start or self.progress[0] <= 0:
            return None
        step, steps = self.progress
        seen, latest = (parse_time(since[1]) if since else None), parse_time(updated_at)
        if since and seen and latest and since[0] < step and latest > seen:
            per_step = (latest - seen).total_seconds() / (step - since[0])
            return max(0.0, (steps - step) * per_step - max(0.0, (now - latest).total_seconds()))
        spent = (now - start).total_seconds()
        if spent <= 0:
            return None
        return max(0.0, (steps - step) * spent / step)


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
    spec: dict = field(default_factory=dict)   # the resolved spec: what "Use these settings" reuses
    input_key: str | None = None

    @property
    def terminal(self) -> bool:
        return all(img.status in TERMINAL for img in self.images)

    @property
    def needs_polling(self) -> bool:
        return not self.terminal or any(img.upscaling for img in self.images)

    @property
    def done_count(self) -> int:
        return sum(img.done for img in self.images)

    @property
    def missing_count(self) -> int:
        return sum(img.missing for img in self.images)

    def elapsed_s(self, now: datetime | None = None) -> float:
        """Creation to now while running; once terminal, to the last image's end (not `updated_at`,
        which a later upscale moves on)."""
        start = parse_time(self.created_at)
        end = self.finished_at() if self.terminal else (now or datetime.now(timezone.utc))
        return max(0.0, (end - start).total_seconds()) if start and end else 0.0

    def duration_words(self, now: datetime | None = None) -> str:
        """"took 42 s", "canceled after 4 s" (not the time a job took: it never finished), or "12 s elapsed"."""
        spent = format_elapsed(self.elapsed_s(now))
        if not self.terminal:
            return f"{spent} elapsed"
        return f"canceled after {spent}" if self.status == "canceled" else f"took {spent}"

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


def read_json(storage: Storage, key: str, what: str) -> dict | None:
    """A JSON object from storage (a job's or a training's manifest), or None if there is none (yet);
    StorageError names `what` when it cannot be read as one."""
    try:
        document = json.loads(storage.get(key))
    except ObjectMissing:
        return None
    except ValueError as e:
        raise StorageError(f"the manifest of {what} is not valid JSON: {e}") from None
    if not isinstance(document, dict):
        raise StorageError(f"the manifest of {what} is not a JSON object")
    return document


def read_manifest(storage: Storage, job_id: str) -> dict | None:
    """The job's manifest, or None if there is no job of that id (yet)."""
    return read_json(storage, manifest_key(job_id), f"job {job_id}")


def job_view(manifest: dict, present: set[str] | None = None) -> JobView:
    """Merge the manifest with the listing of the job's folder (`present`: keys that exist; None: not listed,
    the manifest is taken at its word). A manifest of another shape raises StorageError, like one that
    cannot be read."""
    try:
        return _job_view(manifest, present)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        job_id = manifest.get("id", "?") if isinstance(manifest, dict) else "?"
        raise StorageError(f"the manifest of job {job_id} is malformed ({type(e).__name__}: {e})") from None


def _job_view(manifest: dict, listed: set[str] | None) -> JobView:
    spec = manifest.get("spec") or {}
    present = listed or set()
    images = []
    for img in manifest.get("images", []):
        up = img.get("upscale") or {}
        status = "succeeded" if img["key"] in present else img.get("status", "queued")
        # the manifest says so only once the object was written, and was read before the listing: it is gone
        missing = listed is not None and status == "succeeded" and img["key"] not in present
        x4 = up.get("key") or upscale_key(img["key"])
        preview = img.get("preview_key")
        images.append(ImageView(index=int(img["index"]), key=str(img["key"]), seed=img.get("seed"), status=status,
                                error=_text(img.get("error")), upscale_status=up.get("status"),
                                upscale_error=_text(up.get("error")), upscaled=x4 in present,
                                finished_at=img.get("finished_at"), started_at=img.get("started_at"),
                                progress=_progress(img.get("progress")),
                                preview_key=str(preview) if preview and preview in present else None,
                                missing=missing, worker=_text(img.get("worker"))))
    view = JobView(id=str(manifest["id"]), status=str(manifest.get("status", "queued")),
                   prompt=str(spec.get("prompt") or ""),
                   created_at=manifest.get("created_at"), updated_at=manifest.get("updated_at"),
                   width=int(spec.get("width") or 512), height=int(spec.get("height") or 512), images=images,
                   error=_text(manifest.get("error")), product=_text(spec.get("product")),
                   template=_text(spec.get("template")), spec=dict(spec), input_key=_text(manifest.get("input_key")))
    if view.terminal and view.status not in TERMINAL:  # objects landed before the manifest caught up
        view.status = rollup(i.status for i in images).value
    return view


def _text(value) -> str | None:
    return None if value is None else str(value)


def _progress(value) -> tuple[int, int] | None:
    if not value:
        return None
    step, steps = int(value["step"]), int(value["steps"])
    return (step, steps) if steps > 0 else None


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


@dataclass
class JobPage:
    jobs: list[JobView]
    before: str | None   # where the next page starts (the last job id looked at); None: nothing older


STATUS_FILTERS = {"active": ("queued", "running"), "succeeded": ("succeeded",), "failed": ("failed",),
                  "canceled": ("canceled",)}
SCAN_LIMIT = 400  # manifests read for one page at most: a filter that matches little still answers quickly


def recent_jobs(storage: Storage, limit: int, before: str | None = None, product: str | None = None,
                status: str | None = None) -> JobPage:
    """Up to `limit` jobs older than `before` (ids sort by creation time, as the backend's `before=`
    pages), newest first, of that product and status group; folders without a readable manifest are skipped."""
    ids = _newest_ids(storage, before)  # a generator: read a page at a time, only as far as needed
    found: list[JobView] = []
    for scanned, job_id in enumerate(ids, start=1):
        view = _view_or_none(storage, job_id)
        if view is not None and (product is None or view.product == product) and (
                status is None or view.status in STATUS_FILTERS[status]):
            found.append(view)
        if len(found) >= limit or scanned >= SCAN_LIMIT:
            more = next(ids, None) is not None
            return JobPage(found, job_id if more else None)
    return JobPage(found, None)


def newest_finished(storage: Storage, scan: int, readers: int = 8) -> list[JobView]:
    """The wholly finished jobs among the newest `scan`, newest first: a bounded look (History's reader may read
    400 manifests to fill a filtered page), their manifests read `readers` at a time."""
    ids = list(islice(_newest_ids(storage, None), scan))
    with ThreadPoolExecutor(max_workers=max(1, min(readers, len(ids)))) as pool:
        views = list(pool.map(lambda job_id: _view_or_none(storage, job_id), ids))
    return [v for v in views if v is not None and v.status == "succeeded"]


def _view_or_none(storage: Storage, job_id: str) -> JobView | None:
    """The job as a list shows it; None when it has no manifest or it cannot be read: one unreadable job does not
    hide the others."""
    try:
        manifest = read_manifest(storage, job_id)
        return job_view(manifest) if manifest is not None else None
    except StorageError:
        return None


def _newest_ids(storage: Storage, before: str | None):
    """Job ids newest first, older than `before`: a page at a time from the backend's index where it is built
    (the cost of a page does not grow with history), else from a listing of every job folder."""
    if not storage.exists(INDEX_BUILT):
        yield from sorted((i for i in storage.list_dirs("jobs/") if is_job_id(i) and (before is None or i < before)),
                          reverse=True)
        return
    after = newest_first_key(before) if before else None
    while True:
        keys = storage.list_page(INDEX_JOBS, 100, after)
        if not keys:
            return
        for key in keys:
            yield job_id_of_index_key(key)
        after = keys[-1]


def format_elapsed(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
