"""A GPU worker process: loads the pipeline once onto its device, keeps it warm, runs tasks.

It talks to the scheduler only through small messages (backend.gpu.messages) over a pipe, and
reads one shared integer: the id of the task the scheduler wants canceled. It uploads each
finished image itself, so a picture reaches storage the moment it exists.
"""

import logging
import os
import time
import traceback
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path

from backend.gpu.messages import (
    Done,
    ImageDone,
    ImageFailed,
    LoadFailed,
    Preview,
    Progress,
    Ready,
    Started,
    Stop,
    Task,
    TrainTask,
    UpscaleTask,
)

log = logging.getLogger("showroom.worker")


def _short(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".strip()
    return text if len(text) <= 500 else text[:497] + "..."


def load_generator(settings, index: int, workers: int, cache_name: str):
    """The pipeline of GPU `index` on this box, loaded once and warmed: (device, storage, Generator). The
    `workers` processes of one box share its CPU cores. Used by local workers and GPU nodes alike."""
    import torch

    from backend.gpu import devices, pipeline

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    device = devices.pick_device(settings.device, index)
    storage = settings.open_storage()
    gen = pipeline.Generator(settings.model_id, device, storage, Path(settings.showroom_cache) / cache_name,
                             compile_unet=settings.compile, taesd_id=settings.taesd_id or None,
                             inpaint_model_id=settings.inpaint_model_id or None)
    gen.warm_up()
    return device, storage, gen


def run_worker(worker_id: int, settings, conn, cancel_task, workers: int = 1) -> None:
    """Entry point of the worker process (spawned: nothing of the parent's CUDA state leaks in).
    `workers` is how many run on this box: they share its CPU cores."""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s worker-{worker_id} %(levelname)s %(message)s")
    started = time.perf_counter()
    try:
        device, storage, gen = load_generator(settings, worker_id, workers, f"worker-{worker_id}")
    except Exception as e:
        log.error("could not load %s: %s", settings.model_id, traceback.format_exc())
        conn.send(LoadFailed(worker_id, f"could not load model {settings.model_id!r}: {_short(e)}"))
        return
    conn.send(Ready(worker_id, device, gen.native_size, time.perf_counter() - started))
    log.info("ready on %s in %.1fs", device, time.perf_counter() - started)

    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the backend is gone (killed): nothing will ever be asked again
            log.info("the backend closed the pipe; leaving")
            return
        match message:
            case Stop():
                return
            case Task() as task:
                _run_task(gen, storage, task, conn, cancel_task, settings.storage_retry_s)
            case UpscaleTask() as task:
                _run_upscale(settings, task, conn, worker_id, device)
            case TrainTask() as task:
                _run_training(settings, storage, device, task, conn, worker_id, cancel_task)


def _run_training(settings, storage, device: str, task: TrainTask, conn, worker_id: int, cancel_task) -> None:
    """A product's LoRA, learnt on this worker's GPU while its generation pipeline stays loaded; it stops at
    the next step once the scheduler names it in `cancel_task` (its product was deleted)."""
    from backend.lora.worker_training import TrainingStopped, run_training

    def on_step(step: int, steps: int, loss: float) -> None:
        if cancel_task.value == task.task_id:
            raise TrainingStopped(f"stopped at step {step}")
        conn.send(Progress(task.task_id, step, steps, loss))

    started = time.perf_counter()
    work = Path(settings.showroom_cache) / f"worker-{worker_id}" / f"training-{task.training_id}"
    info, error = None, None
    try:
        info = run_training(settings.model_id, storage, device, task, work, on_step,
                            remover_model=settings.bg_removal_model)
    except TrainingStopped as e:
        log.info("training %s %s", task.training_id, e)
        error = str(e)  # the scheduler says why
    except BaseException as e:  # SystemExit included: the trainer's way of refusing bad options
        log.error("training %s failed: %s", task.training_id, traceback.format_exc())
        if isinstance(e, Exception) and _device_broken(e, device):
            os._exit(DEVICE_BROKEN_EXIT)
        error = f"training failed: {_short(e)}"
    _free_memory()  # out of the except block: its traceback no longer holds the trainer's tensors
    conn.send(Done(task.task_id, seconds=time.perf_counter() - started, info=info or {}, error=error))


def _run_upscale(settings, task: UpscaleTask, conn, worker_id: int, device: str) -> None:
    """The local upscaler, on this worker's GPU; its model loads on first use and stays loaded."""
    from backend.upscale.service import run_upscale

    started = time.perf_counter()
    error = None
    try:
        run_upscale(settings, task.source_key, task.target_key, gpu=worker_id)
    except Exception as e:
        log.error("upscale of %s failed: %s", task.source_key, traceback.format_exc())
        if _device_broken(e, device):
            os._exit(DEVICE_BROKEN_EXIT)
        error = _short(e)
    if error is not None:
        _free_memory()
    conn.send(Done(task.task_id, seconds=time.perf_counter() - started, error=error))


def _run_task(gen, storage, task: Task, conn, cancel_task, retry_s: float) -> None:
    from backend.gpu import pipeline
    from backend.images import encode_png
    from backend.storage import put_retrying

    conn.send(Started(task.task_id))
    started = time.perf_counter()
    last_sent = 0.0

    def on_step(step: int, total: int) -> None:
        nonlocal last_sent
        if time.monotonic() - last_sent > 0.25 or step == total:
            last_sent = time.monotonic()
            conn.send(Progress(task.task_id, step, total))

    def on_preview(jpegs: list[bytes]) -> None:
        # Uploaded beside the generation (previews are never waited for); reported as handed over.
        for index, key, jpeg in zip(task.indices, task.preview_keys, jpegs):
            _uploader().submit(_put_quietly, storage, key, jpeg)
            conn.send(Preview(task.task_id, index, key))

    reason = None
    try:
        images = _generate(gen, task, lambda: cancel_task.value == task.task_id, on_step,
                           on_preview if task.preview_keys else None)
    except pipeline.Canceled:
        conn.send(Done(task.task_id, canceled=True, seconds=time.perf_counter() - started))
        return
    except Exception as e:
        log.error("task %s failed: %s", task.task_id, traceback.format_exc())
        if _device_broken(e, gen.device):
            # A CUDA error poisons this process's context: every later task would fail too. Leave
            # without a report; the scheduler tries these images once more on a fresh worker.
            log.error("the device is in an unusable state; this worker exits to be replaced")
            os._exit(DEVICE_BROKEN_EXIT)
        reason = _oom_reason(task) if _out_of_memory(e) else f"generation failed: {_short(e)}"
    if reason is not None:
        for index in task.indices:
            conn.send(ImageFailed(task.task_id, index, reason))
        conn.send(Done(task.task_id, seconds=time.perf_counter() - started))
        _free_memory()  # out of the except block: its traceback no longer holds the batch's tensors
        return

    def store(index: int, seed: int, key: str, image) -> None:
        params = task.meta | {"seed": seed, "index": index, "job": task.job_id}
        put_retrying(storage, key, encode_png(image, params), "image/png", budget_s=retry_s)

    # PNG encoding (zlib) and uploads release the GIL: a batch's images are stored side by side, and
    # each is reported the moment it is in storage. Only this thread talks on the pipe.
    uploads = {}
    for index, seed, key, image in zip(task.indices, task.seeds, task.keys, images):
        if isinstance(image, str):
            conn.send(ImageFailed(task.task_id, index, image))
        else:
            uploads[_uploader().submit(store, index, seed, key, image)] = index
    for future in as_completed(uploads):
        error = future.exception()
        conn.send(ImageDone(task.task_id, uploads[future]) if error is None else
                  ImageFailed(task.task_id, uploads[future], f"storage write failed: {_short(error)}"))
    conn.send(Done(task.task_id, seconds=time.perf_counter() - started))


_uploads: ThreadPoolExecutor | None = None


def _uploader() -> ThreadPoolExecutor:
    global _uploads
    if _uploads is None:
        _uploads = ThreadPoolExecutor(4, thread_name_prefix="upload")
    return _uploads


DEVICE_BROKEN_EXIT = 3  # the scheduler reads this exit code as "restarted after a device error"
_BROKEN_MARKERS = ("CUDA error", "device-side assert", "illegal memory access", "CUBLAS_STATUS", "CUDNN_STATUS",
                   "unspecified launch failure")


def _out_of_memory(e: BaseException) -> bool:
    """torch.cuda.OutOfMemoryError and MPS's RuntimeError say so; cuBLAS and cuDNN say ALLOC_FAILED."""
    text = str(e)
    return "out of memory" in text.lower() or "STATUS_ALLOC_FAILED" in text


def _device_broken(e: BaseException, device: str) -> bool:
    """A CUDA-level error that left the device unusable: a sticky one (an illegal access, a device-side
    assert) fails the next kernel too. One that did not (cuDNN refusing a shape) fails only its task:
    exiting would cost a model reload and fail the same way on the retry."""
    if _out_of_memory(e) or not any(marker in str(e) for marker in _BROKEN_MARKERS):
        return False
    return not _device_answers(device)


def _device_answers(device: str) -> bool:
    import torch

    if not device.startswith("cuda") or not torch.cuda.is_available():
        return True
    try:
        torch.cuda.synchronize(device)
        return torch.ones(1, device=device).add(1).item() == 2.0
    except Exception:
        return False


def _put_quietly(storage, key: str, data: bytes) -> None:
    try:
        storage.put(key, data, "image/jpeg")
    except Exception as e:  # a lost preview costs nothing: the next one, or the PNG, follows
        log.warning("preview %s not stored: %s", key, _short(e))


def _generate(gen, task: Task, should_cancel, on_step, on_preview=None) -> list:
    """The batch at once; if it runs out of memory, the same images one at a time (same seeds, same
    pictures): a batch too big for this GPU still gives every image that fits alone."""
    try:
        return gen.generate(task, should_cancel=should_cancel, on_step=on_step, on_preview=on_preview)
    except Exception as e:
        if not _out_of_memory(e) or len(task.indices) == 1:
            raise
    log.warning("task %s: a batch of %d is out of memory; making them one at a time", task.task_id,
                len(task.indices))
    _free_memory()
    images = []
    for index, seed, key in zip(task.indices, task.seeds, task.keys):
        single = replace(task, indices=(index,), seeds=(seed,), keys=(key,))
        try:
            images += gen.generate(single, should_cancel=should_cancel, on_step=on_step)
            continue
        except Exception as e:
            if not _out_of_memory(e):
                raise
        images.append(_oom_reason(task))  # this one fails with the reason; the ones that fit are kept
        _free_memory()
    return images


def _oom_reason(task: Task) -> str:
    return f"out of GPU memory at {task.width}x{task.height}: try a smaller size"


def _free_memory() -> None:
    """What a finished training or a failed batch held goes back to the GPU: the collector first, since a
    trainer sits in a reference cycle that only it frees, then the allocator's cache."""
    import gc

    import torch

    if torch.cuda.is_available():
        gc.collect()
        torch.cuda.empty_cache()
