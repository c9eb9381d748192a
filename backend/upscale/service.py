"""Upscaling chosen images 4x: requests, their place in the manifest, and where the work runs.

Every upscale is taken up by a thread of a pool here, which marks it running. Replicate upscales
run in that thread (they wait on the network); local Swin2SR runs in a process of its own, so the
API process never imports torch and the model stays loaded between requests. The engines are in
backend.upscale.engines.
"""

import logging
import multiprocessing as mp
import threading
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from backend.contract import upscale_key
from backend.errors import Conflict, NotFound
from backend.models import ImageRecord, JobManifest, Status, UpscaleRecord
from backend.storage import ObjectMissing, put_retrying

log = logging.getLogger("showroom.upscale")
_engine = None  # the engine of this process, built on first use


def build_engine(settings):
    from backend.upscale.engines import make_upscaler

    token = settings.replicate_api_token.get_secret_value() if settings.replicate_api_token else None
    kwargs = dict(replicate_api_token=token, replicate_base_url=settings.replicate_base_url,
                  replicate_model=settings.replicate_model, replicate_task=settings.replicate_task,
                  local_model_id=settings.local_upscaler_model, device=settings.device)
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


def run_upscale(settings, source_key: str, target_key: str) -> None:
    """Read the image, upscale it, store the result. Runs in a pool thread or the upscaler process."""
    global _engine
    if _engine is None:
        _engine = build_engine(settings)
    storage = settings.open_storage()
    png = storage.get(source_key)
    url = None
    if _engine.name == "replicate" and reachable_from_outside(settings.s3_endpoint_url):
        url = storage.presigned_url(source_key, settings.presign_ttl_s)  # short-lived; else the bytes go along
    result = _engine.upscale(png, source_url=url)
    put_retrying(storage, target_key, result, "image/png", budget_s=settings.storage_retry_s)


class LocalProcess:
    """The process the local upscaler runs in, one upscale at a time (one model in memory). A process
    that dies (out of memory, a CUDA crash) leaves its pool broken for good, so the pool is replaced
    here and the next upscale gets a fresh process."""

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s  # one upscale may take this long; past it the process is killed
        self._lock = threading.Lock()
        self._pool = self._new_pool()

    @staticmethod
    def _new_pool() -> ProcessPoolExecutor:
        return ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"))

    def run(self, work, *args):
        with self._lock:
            pool = self._pool
        try:
            future = pool.submit(work, *args)
        except BrokenProcessPool:  # it died while idle: this upscale never started, a fresh process may run it
            pool = self._replace(pool)
            future = pool.submit(work, *args)
        try:
            return future.result(timeout=self.timeout_s)
        except TimeoutError:
            # A hung upscale would hold the only process, and every later upscale would wait forever.
            for process in list(getattr(pool, "_processes", {}).values()):  # the pool has no public kill
                process.kill()
            self._replace(pool)
            raise RuntimeError(f"the local upscale took longer than {self.timeout_s:g} s and was stopped; "
                               "a fresh process takes the next request") from None
        except BrokenProcessPool:
            self._replace(pool)
            raise RuntimeError("the local upscaler process died while upscaling (out of memory, or a crash in "
                               "the GPU driver?); a fresh process takes the next request") from None

    def _replace(self, broken: ProcessPoolExecutor) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is broken:
                broken.shutdown(wait=False, cancel_futures=True)
                self._pool = self._new_pool()
                log.warning("the local upscaler process died; started a fresh pool")
            return self._pool

    def close(self) -> None:
        with self._lock:
            self._pool.shutdown(wait=False, cancel_futures=True)


class UpscaleService:
    def __init__(self, settings, scheduler, jobs):
        self.settings, self.scheduler, self.jobs = settings, scheduler, jobs
        self.kind = settings.active_upscaler
        self.work = run_upscale  # what an upscale runs: (settings, source key, target key); tests replace it
        # Replicate upscales wait on the network, so four run at once. Local ones run one at a time in
        # the upscaler's process, fed by a single thread: the process is idle whenever that thread
        # takes up an upscale, so "running" is true from the moment it is recorded.
        self.process = LocalProcess(settings.image_timeout_s) if self.kind == "local" else None
        self.pool: Executor = ThreadPoolExecutor(1 if self.process else 4, thread_name_prefix="upscale")
        self._lock = threading.Lock()
        self._inflight: set[tuple[str, int]] = set()  # started by this run and not yet finished

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        if self.process:
            self.process.close()

    def request(self, job_id: str, index: int) -> str:
        """Queue an upscale of a succeeded image and return the key it will have; asking again while
        it is queued, running or done returns the same key instead of paying twice."""
        image = upscalable_image(self.jobs.get(job_id), index)
        if image.upscale and image.upscale.status != Status.failed:
            return image.upscale.key
        record = UpscaleRecord(key=upscale_key(image.key))
        if not self._claim(job_id, index):
            return record.key  # a second click racing the first
        try:
            found: list[str | None] = []
            self.scheduler.mutate(job_id, lambda job: found.append(self._attach(job, index, record)))
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
        """After a restart: upscales left queued or running are started again, once."""
        for image in job.images:
            if image.upscale and not image.upscale.status.is_terminal() and self._claim(job.id, image.index):
                self._start(job.id, image.index, image.key, image.upscale.key)

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
            self._set(job_id, index, Status.failed, f"upscale failed: could not start ({exc})")
            self._release(job_id, index)
            raise
        future.add_done_callback(lambda f: self._finished(job_id, index, f))

    def _run(self, job_id: str, index: int, source: str, target: str) -> None:
        """In a pool thread, as the upscale actually starts."""
        self._set(job_id, index, Status.running)
        if self.process is None:
            self.work(self.settings, source, target)
        else:
            self.process.run(self.work, self.settings, source, target)

    def _finished(self, job_id: str, index: int, future) -> None:
        error = future.exception() if not future.cancelled() else RuntimeError("canceled at shutdown")
        if error is None:
            self._set(job_id, index, Status.succeeded)
            log.info("job %s image %d: upscaled", job_id, index)
        else:
            reason = str(error) if not isinstance(error, ObjectMissing) else "the source image is missing"
            log.warning("job %s image %d: upscale failed: %s", job_id, index, reason)
            self._set(job_id, index, Status.failed, f"upscale failed: {reason}"[:500])
        self._release(job_id, index)

    def _set(self, job_id: str, index: int, status: Status, error: str | None = None) -> None:
        def change(job: JobManifest) -> None:
            record = job.images[index].upscale
            if record is not None and not record.status.is_terminal():
                record.status, record.error = status, error

        try:
            self.scheduler.mutate(job_id, change)
        except Exception:
            log.exception("could not record the upscale of job %s image %d", job_id, index)
