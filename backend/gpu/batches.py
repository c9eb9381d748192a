"""A job's images as work for GPU workers: how many of them the next worker takes, and the task it runs.

Both executors cut batches by this rule and build tasks with this function (the local scheduler over its
idle workers, EXECUTOR=celery over the node workers up), so image i is made from seed + i in the same
batches whatever runs it.
"""

import math
from dataclasses import dataclass
from pathlib import Path

from backend.contract import preview_key
from backend.gpu import messages as m
from backend.models import JobManifest


@dataclass
class HeldJob:
    job: JobManifest          # a private copy, read only: spec, keys, seeds (the manifest store owns the live one)
    loras: tuple
    open: set[int]            # images not yet reported terminal
    canceled: bool = False


def public_model_name(model_id: str) -> str:
    """What a PNG may say about the model: a hub id as it is, a local folder by its name only (never the
    server's paths)."""
    path = Path(model_id)
    return path.name if path.is_absolute() or model_id.startswith(".") or path.is_dir() else model_id


def batch_size(waiting: int, idle: int, max_batch: int) -> int:
    """How many of one job's waiting images the next idle worker takes: an even share of what waits
    among the idle workers (4 images, 4 workers: one each), at most MAX_BATCH."""
    return min(math.ceil(waiting / idle), max_batch)


def build_task(task_id: int, held: HeldJob, indices: list[int], model_id: str) -> m.Task:
    """The message for a batch of one job's images: everything a worker needs, nothing it must look up."""
    job, spec = held.job, held.job.spec
    images = [job.images[i] for i in indices]
    return m.Task(
        task_id=task_id, job_id=job.id, indices=tuple(indices), seeds=tuple(i.seed for i in images),
        keys=tuple(i.key for i in images), prompt=spec.prompt, negative_prompt=spec.negative_prompt,
        steps=spec.steps, guidance_scale=spec.guidance_scale, width=spec.width, height=spec.height,
        strength=spec.strength, input_key=job.input_key, loras=held.loras,
        # what made the picture, written into it: never where its owner is told (a webhook URL may hold a token)
        meta=spec.model_dump(mode="json", exclude={"seed", "num_images", "webhook", "webhook_events"})
        | {"model": public_model_name(model_id)},
        mode=spec.mode, layout_key=job.layout_key, shadow=spec.shadow, harmonize=spec.harmonize,
        reflection=spec.reflection,
        preview_keys=tuple(preview_key(job.id, i) for i in indices),
    )
