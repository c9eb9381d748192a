"""The contract's fixed names that need no library: job ids, storage keys and the status rules.

The one home of these facts. The frontend imports this module too, so it uses the standard library
only (no pydantic, no torch): see ../shared/CONTRACT.md, "Storage layout" and "Status values".
"""

import re
import secrets
import threading
import time
from collections.abc import Iterable
from enum import Enum

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
NAME_RULE = "1-64 letters, digits, '-' or '_', starting with a letter or digit"
JOB_ID_RE = re.compile(r"^[0-9a-f]{32}$")


class Status(str, Enum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    canceled = "canceled"

    def is_terminal(self) -> bool:
        return self.value in TERMINAL


TERMINAL = frozenset({"succeeded", "failed", "canceled"})  # plain strings: what a manifest read as JSON holds


def rollup(statuses: Iterable[str]) -> Status:
    """A job's status from its images': terminal once all are; canceled beats failed beats succeeded."""
    states = [Status(s) for s in statuses]
    if all(s.is_terminal() for s in states):
        if Status.canceled in states:
            return Status.canceled
        return Status.failed if Status.failed in states else Status.succeeded
    return Status.running if any(s != Status.queued for s in states) else Status.queued


# ----- job ids -----
_last_us = 0
_id_lock = threading.Lock()


# ----- cost: the unit MAX_JOB_COST and the queue's bound count in -----
STANDARD_PIXELS, STANDARD_STEPS = 512 * 512, 30  # one "standard picture": 512 x 512 at 30 steps


def image_cost(width: int, height: int, steps: int) -> float:
    """One image's work in standard pictures (at least 1), so a few huge images weigh what many small ones do."""
    return max(1.0, width * height / STANDARD_PIXELS * steps / STANDARD_STEPS)


CHECK_TEMPLATE = "studio-white"
TRAINING_PHOTOS = (2, 40)  # the fewest and most photos one training learns from


def check_spec(product: str, template_ids: Iterable[str]) -> dict:
    """A JobSpec (as JSON) for four test pictures of a learnt product alone on white, beside its photos: whether
    it learnt the product shows at a glance. The studio template when the generator has it."""
    spec = {"product": product, "num_images": 4, "mode": "generate"}
    if CHECK_TEMPLATE in set(template_ids):
        return spec | {"template": CHECK_TEMPLATE}
    return spec | {"prompt": "<product>, centered product shot, plain white background, soft studio light"}


def job_cost(width: int, height: int, steps: int, num_images: int) -> float:
    return round(image_cost(width, height, steps) * num_images, 2)


def new_job_id() -> str:
    """URL-safe, 32 hex characters: 13 of creation time in microseconds (strictly increasing in this
    process, so ids sort by creation even within one microsecond), then 76 random bits."""
    global _last_us
    with _id_lock:
        _last_us = max(time.time_ns() // 1000, _last_us + 1)
        stamp = _last_us
    return f"{stamp:013x}{secrets.randbits(76):019x}"


def created_us(job_id: str) -> int:
    """When a job was made, in microseconds since the epoch, read from its id."""
    return int(job_id[:13], 16)


def is_job_id(value: str | None) -> bool:
    return isinstance(value, str) and JOB_ID_RE.fullmatch(value) is not None


def check_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or NAME_RE.fullmatch(name) is None:  # fullmatch: "$" would let "x\n" in
        raise ValueError(f"{kind} name must be {NAME_RULE}, got {name!r}")
    return name


# ----- storage keys (relative to STORAGE_URL's bucket and prefix) -----
def manifest_key(job_id: str) -> str:
    return f"jobs/{job_id}/job.json"


def job_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/"


def input_key(job_id: str) -> str:
    return f"jobs/{job_id}/input.png"


def cutout_key(job_id: str) -> str:
    return f"jobs/{job_id}/cutout.png"


def layout_key(job_id: str) -> str:
    return f"jobs/{job_id}/layout.png"


def image_key(job_id: str, index: int) -> str:
    return f"jobs/{job_id}/{index}.png"


def preview_key(job_id: str, index: int) -> str:
    return f"jobs/{job_id}/{index}_preview.jpg"


def upscale_key(image_key_: str) -> str:
    return image_key_.removesuffix(".png") + "_x4.png"


def lora_key(product: str) -> str:
    return f"products/{check_name('product', product)}.safetensors"


def product_key(product: str) -> str:
    return f"products/{check_name('product', product)}.json"


def packshot_key(product: str) -> str:
    return f"products/{check_name('product', product)}.png"


def product_folder(product: str) -> str:
    """Ours, beside the contract's layout: what a product keeps besides its record, LoRA and packshot."""
    return f"products/{check_name('product', product)}/"


def product_photos_prefix(product: str) -> str:
    """The photos a product was added with (`photos` parts of POST /v1/products), kept to teach it from later."""
    return f"{product_folder(product)}photos/"


def product_photo_key(product: str, n: int) -> str:
    """Its n-th kept photo (from 0), normalised as a training's photos are."""
    return f"{product_photos_prefix(product)}{n}.png"


def training_key(training_id: str) -> str:
    return f"trainings/{training_id}/job.json"


# ----- ours, beside the contract's layout: an index, so a history page and a boot cost the same with 100
# jobs or 1,000,000 (one LIST of a page instead of every job folder) -----
INDEX_JOBS = "index/jobs/"              # one empty object per job, newest first in key order
INDEX_UNFINISHED = "index/unfinished/"  # one per job not yet terminal: what start-up recovery takes back
INDEX_BUILT = "index/built"             # written once the index covers every job in the bucket
_STAMP_MAX = 16**13 - 1


def newest_first_key(job_id: str) -> str:
    """A key that sorts newer jobs first: the creation stamp counted down, then the id."""
    return f"{INDEX_JOBS}{_STAMP_MAX - created_us(job_id):013x}{job_id}"


def job_id_of_index_key(key: str) -> str:
    return key.rsplit("/", 1)[-1][13:]


def unfinished_key(job_id: str) -> str:
    return f"{INDEX_UNFINISHED}{job_id}"


def training_owner_key(training_id: str) -> str:
    """Ours too: the id of the backend that runs an unfinished training (backend.jobs.leases)."""
    return f"trainings/{training_id}/owner"
