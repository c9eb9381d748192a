"""A training as a GPU worker runs it: photos and the newest checkpoint from storage, backend.lora.train
on this worker's device, each checkpoint back to storage as it is written, the LoRA stored at the end.

Storage holds everything a training needs to go on: a worker killed mid-way (or a restarted backend)
is replaced, and the next attempt resumes from `trainings/<id>/checkpoints/step-NNNNNN/`.
"""

import io
import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from backend.gpu.messages import TrainTask
from backend.storage import ObjectMissing, Storage, StorageError, put_retrying

log = logging.getLogger("showroom.train")

CHECKPOINT_FILES = ("lora.safetensors", "optimizer.safetensors", "state.json")  # state.json last: it marks it whole
# Finding the product in the photos is processor work before step 1 while the GPU waits (a remover pass per photo,
# seconds each for birefnet on onnxruntime's CPU build): past this budget the photos left get no mask.
MASKS_BUDGET_S = 180


def checkpoints_prefix(training_id: str) -> str:
    return f"trainings/{training_id}/checkpoints/"


def lora_result_key(training_id: str) -> str:
    return f"trainings/{training_id}/lora.safetensors"


def boxes_key(training_id: str) -> str:
    """Where the product lies in each photo (photo name -> [left, top, right, bottom] or null), found once."""
    return f"trainings/{training_id}/boxes.json"


def mask_key(training_id: str, name: str) -> str:
    """The product's mask in photo `name` ("L" PNG, the photo's size), for each photo boxes.json gives a box."""
    return f"trainings/{training_id}/masks/{name}"


def product_masks(storage: Storage, training_id: str, remover_model: str | None, photos: list,
                  between: Callable[[], None] | None = None, resuming: bool = False) -> dict:
    """The product's mask in each photo (name -> "L" image, or None), decided by a training's first attempt and
    stored, so a resumed training (or its next chunk, on another node) keeps the same views and weights: found
    with place mode's background remover when it is on this machine, else none (stored as none too: a later
    attempt on a machine that has one must not change what the loss weighs half-way). A training resumed from a
    checkpoint made before masks were found (`resuming`) keeps none. `between` runs before each photo: it
    reports progress and raises TrainingStopped when the training was stopped."""
    from backend.lora.train import find_products

    try:
        return _stored_masks(storage, training_id, photos)
    except ObjectMissing:
        pass
    except (ValueError, TypeError, AttributeError, OSError) as e:
        log.warning("training %s: its stored masks are unreadable (%s); finding the products again", training_id, e)
    masks = {}
    if remover_model and not resuming:
        try:
            masks = find_products(photos, remover_model, between=between, budget_s=MASKS_BUDGET_S)
        except (TrainingStopped, _time_limit()):
            raise
        except Exception as e:  # a remover that fails costs the training its masks, not the training
            log.warning("training %s: the products could not be found in the photos (%s); each view holds its "
                        "photo's centre", training_id, e)
            masks = {}
    try:
        _store_masks(storage, training_id, masks)
    except StorageError as e:  # the next attempt decides again
        log.warning("training %s: the products' masks could not be stored: %s", training_id, e)
    return masks


def _time_limit() -> type[BaseException]:
    """Celery's soft time limit, raised inside a node's task: it must end the chunk, not be taken for a remover
    that failed. The GPU check's Python has no Celery."""
    try:
        from celery.exceptions import SoftTimeLimitExceeded
    except ImportError:
        return TrainingStopped
    return SoftTimeLimitExceeded


def _store_masks(storage: Storage, training_id: str, masks: dict) -> None:
    from backend.lora.views import mask_box

    for name, mask in masks.items():
        if mask is not None:
            out = io.BytesIO()
            mask.save(out, format="PNG")
            put_retrying(storage, mask_key(training_id, name), out.getvalue(), "image/png", budget_s=30)
    boxes = {name: mask_box(mask) if mask is not None else None for name, mask in masks.items()}
    # written last: it says the masks are all there
    put_retrying(storage, boxes_key(training_id), json.dumps(boxes).encode(), "application/json", budget_s=30)


def _stored_masks(storage: Storage, training_id: str, photos: list) -> dict:
    """The stored masks; one that does not fit its photo (the photos changed under it) is dropped, not used."""
    from PIL import Image

    sizes = {p.name: p.image.size for p in photos}
    masks = {}
    for name, box in json.loads(storage.get(boxes_key(training_id))).items():
        masks[name] = None
        if box:
            with Image.open(io.BytesIO(storage.get(mask_key(training_id, name)))) as mask:
                masks[name] = mask.convert("L")
            if masks[name].size != sizes.get(name, masks[name].size):
                log.warning("training %s: the stored mask of %s is %s, the photo %s; it is left out", training_id,
                            name, masks[name].size, sizes[name])
                masks[name] = None
    return masks


def newest_checkpoint(storage: Storage, training_id: str) -> str | None:
    """The newest stored checkpoint with all its files (state.json is written last), as its key prefix."""
    for step in sorted(storage.list_dirs(checkpoints_prefix(training_id)), reverse=True):
        prefix = f"{checkpoints_prefix(training_id)}{step}/"
        names = {key.rsplit("/", 1)[-1] for key in storage.list_files(prefix)}
        if names.issuperset(CHECKPOINT_FILES):
            return prefix
    return None


def checkpoint_step(prefix: str) -> int:
    """`trainings/<id>/checkpoints/step-000040/` -> 40."""
    return int(prefix.rstrip("/").rsplit("step-", 1)[-1])


class TrainingStopped(Exception):
    """Raised from a step's callback: the training was asked to stop (its owner stopped it, or deleted its product)."""


def run_training(model_id: str, storage: Storage, device: str, task: TrainTask, work: Path,
                 on_step: Callable[[int, int, float], None], until: int | None = None,
                 remover_model: str | None = None) -> dict:
    """Train to `task.steps` (or only to step `until`, a chunk of it: then the chunk's last checkpoint is
    stored and no LoRA yet), resuming from the newest stored checkpoint; returns what the manifest records.
    `remover_model` (BG_REMOVAL_MODEL) finds the product in the photos, so that every view holds it."""
    from backend.lora import train as trainer

    started = time.monotonic()
    shutil.rmtree(work, ignore_errors=True)
    photos, output = work / "photos", work / "lora.safetensors"
    photos.mkdir(parents=True)
    for n, key in enumerate(task.photo_keys):
        (photos / f"{n}.png").write_bytes(storage.get(key))
    resumed = newest_checkpoint(storage, task.training_id)
    if resumed:
        local = trainer.checkpoint_root(output) / resumed.rstrip("/").rsplit("/", 1)[-1]
        local.mkdir(parents=True)
        for name in CHECKPOINT_FILES:
            (local / name).write_bytes(storage.get(resumed + name))

    def upload(folder: Path, step: int) -> None:
        prefix = f"{checkpoints_prefix(task.training_id)}{folder.name}/"
        for name in CHECKPOINT_FILES:
            put_retrying(storage, prefix + name, (folder / name).read_bytes(), "application/octet-stream", budget_s=60)
        for old in storage.list_dirs(checkpoints_prefix(task.training_id)):  # keep the newest only
            if old != folder.name:
                for name in CHECKPOINT_FILES:
                    storage.delete(f"{checkpoints_prefix(task.training_id)}{old}/{name}")

    target = min(until or task.steps, task.steps)
    args = trainer.parse_args([
        "--images", str(photos), "--trigger", task.trigger, "--output", str(output), "--model", model_id,
        "--steps", str(target), "--rank", str(task.rank), "--resolution", str(task.resolution),
        "--device", device, "--checkpoint-every", str(task.checkpoint_every), "--keep-checkpoints", "1",
        "--seed", str(task.seed), "--no-flip",  # products carry labels and logos: never mirrored
        "--quiet",
        # only with a checkpoint to resume from: the trainer warns when it is told to resume and finds none
        *(["--resume"] if resumed else []),
    ])
    result = trainer.train(args, on_step=lambda step, _steps, loss: on_step(step, task.steps, loss),
                           on_checkpoint=upload,
                           locate=lambda photos: product_masks(storage, task.training_id, remover_model, photos,
                                                               between=lambda: on_step(0, task.steps, None),
                                                               resuming=resumed is not None))
    if target < task.steps:  # a chunk: the next one resumes from the checkpoint written at its end
        upload(trainer.checkpoint_root(output) / f"step-{target:06d}", target)
        shutil.rmtree(work, ignore_errors=True)
        return {"resumed_from": result.start_step or None, "until": target}
    put_retrying(storage, lora_result_key(task.training_id), output.read_bytes(), "application/octet-stream",
                 budget_s=120)
    shutil.rmtree(work, ignore_errors=True)
    steps = result.end_step - result.start_step
    return {"resumed_from": result.start_step or None,
            "probe_loss": [round(result.probe_loss_before, 6), round(result.probe_loss_after, 6)],
            "product_found": [result.found, result.photos],
            # what the app tells the next owner a training takes here: loading and finding the product included
            "step_s": round((time.monotonic() - started) / steps, 4) if steps > 0 else None,
            "device": device.split(":")[0]}
