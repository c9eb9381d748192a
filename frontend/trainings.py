"""Teaching Showroom a product, as the frontend sees it: the training manifest read from storage, the
words chosen to call the product up, and how long a training should take. Nothing here draws.
"""

import hashlib
import json
import math
import re
from collections import Counter
from dataclasses import dataclass

from backend.contract import TERMINAL, training_key
from backend.lora.safetensors_file import LoraFormatError, read_safetensors_header
from backend.storage import Storage, StorageError
from frontend.jobs import is_job_id, parse_time, read_json

# What the page sends as `steps`: the backend's own default (DEFAULT_STEPS in backend/products/training.py),
# sent explicitly so that the time promised on the button is about the training that runs.
TEACH_STEPS = 800
# Seconds per training step at the model's own size, by the kind of device: a rough figure for SD 1.x
# at 512 px and rank 16 (a rented 4090 does 800 steps in about 4-8 minutes). It is only an estimate.
SECONDS_PER_STEP = {"cuda": 0.45, "mps": 2.0, "cpu": 6.0}
SDXL_STEP_COST = 3.0  # an SDXL step at 1024 px against SD 1.x's at 512 (kohya's and diffusers' reports: 2.5-4x)
# Rare tokens: words the model knows next to nothing about, so they come to mean the product alone.
RARE_TOKENS = ("zwx", "ohwx", "qzv", "vkx", "zqj", "xqk", "jvq", "wqz")
LABELS = {"queued": "Waiting to start", "running": "Learning", "succeeded": "Learnt", "failed": "Failed",
          "canceled": "Canceled"}


@dataclass(frozen=True)
class TrainingView:
    id: str
    product: str
    status: str
    step: int
    steps: int
    loss: float | None = None
    error: str | None = None
    created_at: str | None = None
    updated_at: str | None = None
    check_job: str | None = None  # the test pictures the backend started once it learnt
    earlier_check_job: str | None = None  # those of the LoRA the product had when this training started
    product_found: tuple[int, int] | None = None  # (photos where the product was found, photos)
    step_s: float | None = None  # measured: seconds a step took on its worker, all in
    device: str | None = None    # the kind of device it learnt on (cuda, mps, cpu)
    resolution: int | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / self.steps) if self.steps > 0 else 0.0

    @property
    def label(self) -> str:
        return LABELS.get(self.status, self.status)

    def eta_s(self, since: tuple[int, str] | None = None) -> float | None:
        """Seconds left at the speed measured between `since` (a step and the manifest time it was seen at,
        first seen by this page) and now; from the training's creation when the page saw no earlier step."""
        step0, t0 = since if since else (0, self.created_at)
        start, end = parse_time(t0), parse_time(self.updated_at)
        if self.status != "running" or not start or not end or self.step <= step0:
            return None
        per_step = (end - start).total_seconds() / (self.step - step0)
        return max(0.0, (self.steps - self.step) * per_step)


def training_view(manifest: dict) -> TrainingView:
    try:
        progress = manifest.get("progress") or {}
        loss = manifest.get("loss")
        return TrainingView(id=str(manifest["id"]), product=str(manifest.get("product") or ""),
                            status=str(manifest.get("status") or "queued"), step=int(progress.get("step") or 0),
                            steps=int(progress.get("steps") or 0), loss=None if loss is None else float(loss),
                            error=None if manifest.get("error") is None else str(manifest["error"]),
                            created_at=manifest.get("created_at"), updated_at=manifest.get("updated_at"),
                            check_job=_job_id(manifest.get("check_job")),
                            earlier_check_job=_job_id(manifest.get("earlier_check_job")),
                            product_found=_pair(manifest.get("product_found")),
                            step_s=_positive(manifest.get("step_s")),
                            device=manifest["device"] if manifest.get("device") in SECONDS_PER_STEP else None,
                            resolution=manifest["resolution"] if type(manifest.get("resolution")) is int else None)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise StorageError(f"the training manifest is malformed ({type(e).__name__}: {e})") from None


def _positive(value) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) and value > 0 else None


def _job_id(value) -> str | None:
    return value if is_job_id(value) else None


def _pair(value) -> tuple[int, int] | None:
    """Two counts, the first no more than the second; anything else (an older manifest: none) is None."""
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) and v >= 0 for v in value) \
            and value[0] <= value[1]:
        return value[0], value[1]
    return None


def found_words(found: tuple[int, int] | None) -> str | None:
    """What the owner is told of where it found the product in the photos, with advice when it mostly did not."""
    if found is None or found[1] == 0:
        return None
    hits, photos = found
    said = (f"It found your product in {hits} of the {photos} photos: there it learnt the product, not what is "
            "around it.")
    if hits * 2 < photos:
        said += (" In the others it could not tell the product from what surrounds it: photos on a plain "
                 "background (or PNGs with transparency) teach it better.")
    return said


def load_training(storage: Storage, training_id: str) -> TrainingView | None:
    """The training's manifest from storage (as jobs are followed), or None when there is none."""
    manifest = read_json(storage, training_key(training_id), f"training {training_id}")
    return None if manifest is None else training_view(manifest)


def suggest_trigger(name: str, category: str | None) -> str:
    """A rare token plus what the product is ("zwx mug"): the token is picked from the name, so two
    products rarely share one; the words after it come from the category, else from the name."""
    token = RARE_TOKENS[hashlib.sha256(name.encode()).digest()[0] % len(RARE_TOKENS)]
    words = re.sub(r"[-_]+", " ", (category or name)).strip().lower()
    return f"{token} {words}".strip()


def lora_trigger(data: bytes) -> str | None:
    """The trigger words a LoRA file names itself (torch-free, header only): the SAI model spec's trigger phrase
    (ours write it, as do ComfyUI's and SwarmUI's trainers), else the caption tag kohya's trainer counted most
    often (`ss_tag_frequency`, what A1111 lists as its training words); None when it names none or is no LoRA."""
    try:
        _, metadata, _ = read_safetensors_header(data)
    except LoraFormatError:
        return None  # the backend refuses it with its reason
    phrase = metadata.get("modelspec.trigger_phrase", "").strip()
    if phrase:
        return phrase[:200]
    try:
        datasets = json.loads(metadata.get("ss_tag_frequency") or "{}")
    except ValueError:
        return None
    counts = Counter()
    for tags in datasets.values() if isinstance(datasets, dict) else ():
        for tag, n in tags.items() if isinstance(tags, dict) else ():
            if isinstance(n, int | float) and str(tag).strip():
                counts[str(tag).strip()[:200]] += n
    return counts.most_common(1)[0][0] if counts else None


def measured_minutes(steps: int, trainings: list[TrainingView], devices: tuple[str, ...],
                     native_size: int) -> int | None:
    """About how many minutes `steps` steps take, at the speed the newest training that succeeded on this kind of
    device and at this size measured; None when none did (a new box, another model)."""
    kinds = {d.split(":")[0] for d in devices}
    seen = [t for t in trainings if t.status == "succeeded" and t.step_s and t.device in kinds
            and t.resolution == native_size]
    if not seen:
        return None
    newest = max(seen, key=lambda t: t.created_at or "")
    return max(1, math.ceil(steps * newest.step_s / 60))


def estimate_minutes(steps: int, devices: tuple[str, ...], native_size: int = 512) -> int:
    """About how many minutes `steps` training steps take on the fastest device the backend reports, for a model
    of `native_size` (SDXL trains at 1024 px: four times the pixels of SD 1.x's 512 through a larger UNet)."""
    kinds = {d.split(":")[0] for d in devices} or {"cuda"}  # an unknown backend: assume the GPU it is meant for
    per_step = min(SECONDS_PER_STEP.get(k, SECONDS_PER_STEP["cpu"]) for k in kinds)
    larger = max(1.0, SDXL_STEP_COST * (native_size / 1024) ** 2)  # smaller models: SD 1.x's figure stands
    return max(1, math.ceil(steps * per_step * larger / 60))
