"""What an executor reports, applied to the job manifests: the one place events become manifest changes.

An event for an image that is terminal already (canceled while its batch ran, say) changes nothing:
a manifest never leaves a terminal state.
"""

import logging
from collections.abc import Callable

from backend.contract import image_key, job_prefix
from backend.gpu import executor as ev
from backend.jobs.manifests import ManifestStore
from backend.models import ImageRecord, JobManifest, StepProgress
from backend.storage import ObjectMissing, StorageError

log = logging.getLogger("showroom.events")


class JobEvents:
    def __init__(self, store: ManifestStore, on_metric: Callable[[str, dict], None] | None = None,
                 on_training: Callable[[ev.TrainingEvent], None] | None = None):
        self.store = store
        self.on_metric = on_metric or (lambda kind, info: None)
        self.on_training = on_training or (lambda event: None)

    def __call__(self, event: ev.Event) -> None:
        try:
            self._apply(event)
        except ObjectMissing:
            log.info("%s for a job that no longer exists (deleted): ignored", type(event).__name__)
            self._remove_late_write(event)

    def _remove_late_write(self, event: ev.Event) -> None:
        """An image or preview that landed after its job was deleted is removed as it is reported, so a
        delete need not wait for a running batch to stop (the delete's own sweeps are the second net)."""
        match event:
            case ev.ImageSucceeded(job_id, index):
                key = image_key(job_id, index)
            case ev.ImagePreview(job_id, _, key) if key.startswith(job_prefix(job_id)):
                pass
            case _:
                return
        try:
            self.store.quick.delete(key)
            log.info("%s landed after its job was deleted: removed", key)
        except StorageError as e:
            log.warning("%s landed after its job was deleted and could not be removed: %s", key, e)

    def _apply(self, event: ev.Event) -> None:
        match event:
            case ev.ImagesStarted(job_id, indices, worker):
                self._images(job_id, indices, lambda img: img.started(worker))
            case ev.ImagesProgress(job_id, indices, step, steps):
                self._images(job_id, indices, lambda img: _progress(img, step, steps), running_only=True)
            case ev.ImagePreview(job_id, index, key):
                self._images(job_id, (index,), lambda img: setattr(img, "preview_key", key), running_only=True)
            case ev.ImageSucceeded(job_id, index):
                self._finish(job_id, index, ImageRecord.succeeded)
            case ev.ImageFailed(job_id, index, error):
                self._finish(job_id, index, lambda img: img.failed(error))
            case ev.ImagesRequeued(job_id, indices):
                self._images(job_id, indices, ImageRecord.requeued)
            case ev.ImagesCanceled(job_id, indices):
                for index in indices:
                    self._finish(job_id, index, ImageRecord.canceled)
            case ev.BatchFinished(seconds, images):
                self.on_metric("task", {"seconds": seconds, "images": images})
            case ev.WorkerReady(worker, load_s):
                self.on_metric("worker_ready", {"worker": worker, "load_s": load_s})
            case ev.TrainingEvent():
                self.on_training(event)

    def _images(self, job_id: str, indices, verb, running_only: bool = False) -> JobManifest:
        def change(job: JobManifest) -> None:
            for index in indices:
                img = job.images[index]
                if not img.status.is_terminal() and (not running_only or img.status == "running"):
                    verb(img)

        return self.store.update(job_id, change)

    def _finish(self, job_id: str, index: int, verb) -> None:
        was_terminal = []

        def change(job: JobManifest) -> None:
            img = job.images[index]
            was_terminal.append(job.status.is_terminal())
            if not img.status.is_terminal():
                verb(img)
                img.progress = None
                self.on_metric("image", {"status": img.status.value})

        job = self.store.update(job_id, change)
        if job.status.is_terminal() and not was_terminal[0]:
            self.on_metric("job", {"status": job.status.value})
            log.info("job %s %s", job.id, job.status.value)


def _progress(img: ImageRecord, step: int, steps: int) -> None:
    img.progress = StepProgress(step=step, steps=steps)
