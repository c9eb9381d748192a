"""Submitting, reading and canceling jobs: validation first, then one manifest write, then the queue."""

import hashlib
import logging
import secrets
import threading

from backend.contract import image_key, input_key, lora_key, new_job_id
from backend.errors import InvalidRequest, NotFound, QueueFull, Unavailable, UnknownReference
from backend.gpu.executor import Executor
from backend.gpu.messages import LoraTask
from backend.images import BadImage, normalize_photo
from backend.jobs.manifests import JobStore
from backend.models import ImageRecord, JobManifest, JobSpec, ResolvedSpec, Status, now
from backend.products.catalog import Catalog
from backend.storage import ObjectMissing, StorageError

log = logging.getLogger("showroom.jobs")
DEFAULT_STEPS, DEFAULT_GUIDANCE, DEFAULT_STRENGTH = 30, 7.5, 0.5
PRODUCT_TOKEN = "<product>"


class JobService:
    def __init__(self, settings, catalog: Catalog, store: JobStore, scheduler: Executor, default_size: int):
        self.settings, self.catalog, self.store, self.scheduler = settings, catalog, store, scheduler
        self.default_size = default_size
        self._idem_locks = [threading.Lock() for _ in range(64)]  # striped: keys do not wait on each other

    # ----- resolving a spec -----
    def resolve(self, spec: JobSpec, has_photo: bool) -> ResolvedSpec:
        template = self.catalog.template(spec.template) if spec.template else None
        product = self.catalog.product(spec.product) if spec.product else None
        for extra in spec.loras:
            if not self.catalog.lora_exists(extra.name):
                raise UnknownReference(f"unknown LoRA {extra.name!r}; add it with POST /v1/products")
        prompt = spec.prompt if spec.prompt is not None else (template.prompt if template else "")
        if product:
            prompt = prompt.replace(PRODUCT_TOKEN, product.trigger) if PRODUCT_TOKEN in prompt \
                else f"{product.trigger}, {prompt}".strip(", ")
        elif PRODUCT_TOKEN in prompt:
            prompt = prompt.replace(PRODUCT_TOKEN, "the product")
        prompt = prompt.strip()
        if not prompt:
            raise InvalidRequest("prompt is empty: give a prompt, or a template that has one")
        if len(prompt) > 1000:
            raise InvalidRequest(f"prompt must be at most 1000 characters once the template is applied, "
                                 f"got {len(prompt)}")
        negative = spec.negative_prompt if spec.negative_prompt is not None else (
            template.negative_prompt if template else "")
        steps = spec.steps or (template.steps if template else DEFAULT_STEPS)
        strength = spec.strength if spec.strength is not None else (template.strength if template else DEFAULT_STRENGTH)
        if has_photo and int(steps * strength) < 1:
            raise InvalidRequest(f"with a photo, steps x strength must be at least 1 (no denoising step "
                                 f"would run), got {steps} x {strength}")
        return ResolvedSpec(
            prompt=prompt, negative_prompt=negative, product=spec.product, template=spec.template,
            loras=spec.loras, num_images=spec.num_images, steps=steps,
            guidance_scale=spec.guidance_scale if spec.guidance_scale is not None else (
                template.guidance_scale if template else DEFAULT_GUIDANCE),
            width=spec.width or self.native_size(), height=spec.height or self.native_size(),
            seed=spec.seed if spec.seed is not None else secrets.randbelow(2**32), strength=strength,
        )

    def native_size(self) -> int:
        return self.scheduler.native_size or self.default_size

    def loras_for(self, spec: ResolvedSpec) -> tuple[LoraTask, ...]:
        loras = []
        if spec.product:
            product = self.catalog.product(spec.product)
            loras.append(LoraTask(product.name, product.weight, lora_key(product.name)))
        loras += [LoraTask(x.name, x.weight, lora_key(x.name)) for x in spec.loras]
        return tuple(loras)

    # ----- the verbs -----
    def submit(self, spec: JobSpec, photo: bytes | None = None, idempotency_key: str | None = None,
               client: str = "") -> JobManifest:
        if idempotency_key:
            lock = self._idem_locks[hash((client, idempotency_key)) % len(self._idem_locks)]
            with lock:  # one submission per key at a time, so a retry never races the first
                earlier = self._idempotent(idempotency_key, client)
                if earlier:
                    return earlier
                record = self._idem_key(idempotency_key, client)
                # The record is written before the manifest: a job that exists always has it, so a
                # retry can never start a second one. A record whose manifest never came is ignored.
                return self._submit(spec, photo, record)
        return self._submit(spec, photo)

    def _submit(self, spec: JobSpec, photo: bytes | None, record: str | None = None) -> JobManifest:
        if self.scheduler.hopeless():
            raise Unavailable(f"generation is unavailable: {self.scheduler.last_error()}")
        resolved = self.resolve(spec, has_photo=photo is not None)
        png = None
        if photo is not None:
            try:
                png = normalize_photo(photo, max_bytes=self.settings.max_upload_bytes,
                                      max_pixels=self.settings.max_upload_pixels)
            except BadImage as e:
                raise InvalidRequest(str(e)) from None
        pending = self.scheduler.pending_images()
        if pending + resolved.num_images > self.settings.queue_max_images:
            raise QueueFull(f"the queue is full ({pending} images waiting); try again shortly",
                            headers={"Retry-After": "10"})
        job_id = new_job_id()
        stamp = now()
        job = JobManifest(
            id=job_id, created_at=stamp, updated_at=stamp, status=Status.queued, spec=resolved,
            input_key=input_key(job_id) if png else None,
            images=[ImageRecord(index=i, key=image_key(job_id, i), seed=resolved.seed + i)
                    for i in range(resolved.num_images)],
        )
        loras = self.loras_for(resolved)
        if png:
            self.store.storage.put(job.input_key, png, "image/png")
        if record:
            self.store.storage.put(record, job_id.encode(), "text/plain")
        if not self.store.save(job, keep=False):
            self._discard(job, record)
            raise Unavailable("storage is unreachable; nothing was queued, try again shortly")
        self.scheduler.submit(job, loras)
        log.info("job %s queued: %d images, %dx%d, %d steps, product=%s, template=%s", job_id,
                 resolved.num_images, resolved.width, resolved.height, resolved.steps, resolved.product,
                 resolved.template)
        return job

    def _discard(self, job: JobManifest, record: str | None) -> None:
        """After a failed manifest write, remove what may have landed all the same (a write can fail
        after storing), so neither a retry nor a later start-up finds a job that was never queued."""
        for key in (job.manifest_key, record, job.input_key):
            if key:
                try:
                    self.store.storage.delete(key)
                except StorageError as e:
                    log.warning("job %s: could not remove %s after a failed submit: %s", job.id, key, e)

    def _idem_key(self, key: str, client: str) -> str:
        return f"idempotency/{hashlib.sha256(f'{client}|{key}'.encode()).hexdigest()}"

    def _idempotent(self, key: str, client: str) -> JobManifest | None:
        if len(key) > 255:
            raise InvalidRequest("Idempotency-Key must be at most 255 characters")
        try:
            job_id = self.store.storage.get(self._idem_key(key, client)).decode()
        except ObjectMissing:
            return None
        try:
            job = self.get(job_id)
        except NotFound:
            return None  # the first try stopped before its manifest was written: nothing was started
        log.info("idempotent retry for job %s", job_id)
        return job

    def get(self, job_id: str) -> JobManifest:
        active = self.scheduler.active(job_id)
        if active:
            return active
        try:
            return self.store.load(job_id)
        except ObjectMissing:
            raise NotFound(f"no job {job_id!r}") from None

    def list(self, limit: int) -> list[JobManifest]:
        return self.store.recent(limit)

    def cancel(self, job_id: str) -> JobManifest:
        job = self.scheduler.cancel(job_id)
        if job is not None:
            log.info("job %s cancel requested", job_id)
            return job
        job = self.get(job_id)
        if job.status.is_terminal():
            return job
        # Known to storage but not held: an earlier run's job that start-up recovery has not taken back
        # yet. Recorded through the one writer; if recovery took it meanwhile, cancel it where it is held.
        job = self.scheduler.mutate(job_id, _cancel_rest)
        return self.scheduler.cancel(job_id) or job


def _cancel_rest(job: JobManifest) -> None:
    for img in job.images:
        if not img.status.is_terminal():
            img.canceled()
    job.refresh()
