"""Upscaling chosen images 4x: requests, their place in the manifest, and where the work runs.

Every upscale is taken up by a thread of a pool here, which marks it running. Replicate upscales
run in that thread (they wait on the network); local Swin2SR runs on a GPU worker of the executor
(`Executor.upscale`), so the API process never imports torch, the model stays loaded in that worker
and the GPU is one the executor knows about. The engines are in backend.upscale.engines.
"""

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from backend.contract import upscale_key
from backend.errors import Conflict, NotFound
from backend.models import ImageRecord, JobManifest, Status, UpscaleRecord
from backend.storage import ObjectMissing, StorageError, put_retrying

log = logging.getLogger("showroom.upscale")
_engine = None  # the engine of this process, built on first use


def build_engine(settings, gpu: int = 0):
    from backend.upscale.engines import make_upscaler

    token = settings.replicate_api_token.get_secret_value() if settings.replicate_api_token else None
    kwargs = dict(replicate_api_token=token, replicate_base_url=settings.replicate_base_url,
                  replicate_model=settings.replicate_model, replicate_task=settings.replicate_task,
                  local_model_id=settings.local_upscaler_model, device=settings.device, gpu=gpu)
    if settings.replicate_version:
        kwargs["replicate_version"] = settings.replicate_version
    return make_upscaler(settings.active_upscaler, **kwargs)


def reachable_from_outside(endpoint_url: str | None) -> bool:
    """Replicate fetches a presigned URL from the internet: AWS (no endpoint) or a public endpoint only."""
    import ipaddress
    from urllib.parse import urlparse

    if not endpoint_url:
        return True
    host = urlparse(endpoint_url).hostname or ""
    if host == "localhost" or "." not in host:
        return False
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return True  # a DNS name: assume public
    return ip.is_global


def upscalable_image(job: JobManifest, index: int) -> ImageRecord:
    """The image `index` of `job`, if it can be upscaled: NotFound or Conflict saying why not."""
    if not 0 <= index < len(job.images):
        raise NotFound(f"job {job.id} has no image {index}; its images are 0..{len(job.images) - 1}")
    image = job.images[index]
    if image.status != Status.succeeded:
        raise Conflict(f"image {index} is {image.status.value}; only a succeeded image can be upscaled")
    return image


def _started(future, poll_s: float = 0.2) -> bool:
    """Wait until a GPU takes the upscale up (its executor marks the future running) or it ends; True if taken."""
    while not future.done():
        if future.running():
            return True
        time.sleep(poll_s)
    return False


def run_upscale(settings, source_key: str, target_key: str, gpu: int = 0) -> None:
    """Read the image, upscale it, store the result. Runs in a pool thread (Replicate) or a GPU worker (local)."""
    global _engine
    if _engine is None:
        _engine = build_engine(settings, gpu)
    storage = settings.open_storage()
    png = storage.get(source_key)
    url = None
    if _engine.name == "replicate" and reachable_from_outside(settings.s3_endpoint_url):
        url = storage.presigned_url(source_key, settings.presign_ttl_s)  # short-lived; else the bytes go along
    result = _engine.upscale(png, source_url=url)
    put_retrying(storage, target_key, result, "image/png", budget_s=settings.storage_retry_s)


class UpscaleService:
    def __init__(self, settings, executor, store):
        self.settings, self.executor, self.store = settings, executor, store
        self.kind = settings.active_upscaler
        self.work = run_upscale  # what a Replicate upscale runs: (settings, source key, target key); tests replace it
        # Replicate upscales wait on the network, so four run at once. Local ones run on a GPU worker of
        # the executor (which queues them ahead of images and enforces IMAGE_TIMEOUT_S); a thread waits on each.
        self.pool = ThreadPoolExecutor(4, thread_name_prefix="upscale")
        self._lock = threading.Lock()
        self._inflight: set[tuple[str, int]] = set()  # started by this run and not yet finished

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def request(self, job_id: str, index: int) -> str:
        """Queue an upscale of a succeeded image and return the key it will have; asking again while
        it is queued, running or done returns the same key instead of paying twice."""
        try:
            image = upscalable_image(self.store.get(job_id), index)
        except ObjectMissing:
            raise NotFound(f"no job {job_id!r}") from None
        if image.upscale and image.upscale.status != Status.failed:
            return image.upscale.key
        record = UpscaleRecord(key=upscale_key(image.key))
        if not self._claim(job_id, index):
            return record.key  # a second click racing the first
        try:
            found: list[str | None] = []
            self.store.update(job_id, lambda job: found.append(self._attach(job, index, record)))
            if found[0] is not None:  # another click started and finished it between our read and our claim
                self._release(job_id, index)
                return found[0]
            self._start(job_id, index, image.key, record.key)
        except Exception:
            self._release(job_id, index)
            raise
        return record.key

    @staticmethod
    def _attach(job: JobManifest, index: int, record: UpscaleRecord) -> str | None:
        """Record `record` on the image unless it has a live or finished upscale; that one's key if so."""
        current = job.images[index].upscale
        if current is None or current.status == Status.failed:
            job.images[index].upscale = record
            return None
        return current.key

    def resume(self, job: JobManifest) -> None:
        """After a restart: upscales left queued or running are started again, once; one whose result is
        stored already (the run stopped between the upload and the record) is done, not paid for twice."""
        for image in job.images:
            if image.upscale and not image.upscale.status.is_terminal() and self._claim(job.id, image.index):
                if self._stored(image.upscale.key):
                    self._set(job.id, image.index, Status.succeeded)
                    self._release(job.id, image.index)
                else:
                    self._start(job.id, image.index, image.key, image.upscale.key)

    def _stored(self, key: str) -> bool:
        try:
            return self.store.storage.exists(key)
        except StorageError:
            return False  # unknown: upscale again rather than record a result that may not be there

    def in_flight(self) -> bool:
        """True while an upscale is queued or running: the box has work."""
        with self._lock:
            return bool(self._inflight)

    def _claim(self, job_id: str, index: int) -> bool:
        with self._lock:
            if (job_id, index) in self._inflight:
                return False
            self._inflight.add((job_id, index))
            return True

    def _release(self, job_id: str, index: int) -> None:
        with self._lock:
            self._inflight.discard((job_id, index))

    def _start(self, job_id: str, index: int, source: str, target: str) -> None:
        log.info("job %s image %d: upscale queued (%s)", job_id, index, self.kind)
        try:
            future = self.pool.submit(self._run, job_id, index, source, target)
        except RuntimeError as exc:  # the pool is shut down: the app is stopping
            self._set(job_id, index, Status.failed, f"could not start ({exc})")
            self._release(job_id, index)
            raise
        future.add_done_callback(lambda f: self._finished(job_id, index, f, target))

    def _run(self, job_id: str, index: int, source: str, target: str) -> None:
        """In a pool thread, as the upscale actually starts."""
        if self.store.was_deleted(job_id):  # deleted while it waited for a thread: pay for nothing
            raise ObjectMissing(job_id)
        if self.kind == "local":
            future = self.executor.upscale(source, target)  # queued ahead of images, for the next free GPU
            if _started(future):  # queued until then: the manifest does not claim a GPU that is not at work
                self._set(job_id, index, Status.running)
            future.result()
        else:
            self._set(job_id, index, Status.running)
            self.work(self.settings, source, target)

    def _finished(self, job_id: str, index: int, future, target: str) -> None:
        error = future.exception() if not future.cancelled() else RuntimeError("canceled at shutdown")
        if self.store.was_deleted(job_id):  # the job was deleted while it was upscaled: keep nothing of it
            if error is None:
                self._remove(target)
            self._release(job_id, index)
            return
        if error is None:
            self._set(job_id, index, Status.succeeded)
            log.info("job %s image %d: upscaled", job_id, index)
        else:
            reason = str(error) if not isinstance(error, ObjectMissing) else "the source image is missing"
            log.warning("job %s image %d: upscale failed: %s", job_id, index, reason)
            self._set(job_id, index, Status.failed, reason[:500])  # the upscale's own error: no "failed" twice
        self._release(job_id, index)

    def _remove(self, key: str) -> None:
        try:
            self.store.storage.delete(key)
        except StorageError as e:
            log.warning("the upscale %s of a deleted job is left in storage: %s", key, e)

    def _set(self, job_id: str, index: int, status: Status, error: str | None = None) -> None:
        def change(job: JobManifest) -> None:
            record = job.images[index].upscale
            if record is not None and not record.status.is_terminal():
                record.status, record.error = status, error

        try:
            self.store.update(job_id, change)
        except Exception:
            log.exception("could not record the upscale of job %s image %d", job_id, index)
