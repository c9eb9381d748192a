"""Submitting, reading and canceling jobs: validation first, then one manifest write, then the queue."""

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager

from backend.contract import image_key, input_key, job_prefix, layout_key, lora_key, new_job_id
from backend.errors import Conflict, InvalidRequest, NotFound, QueueFull, ShowroomError, Unavailable, UnknownReference
from backend.gpu.executor import Executor
from backend.gpu.messages import LoraTask
from backend.images import BadImage, normalize_photo
from backend.jobs import specs
from backend.jobs.manifests import ManifestStore
from backend.jobs.prepare import Preparer
from backend.jobs.webhooks import check_url
from backend.models import ImageRecord, JobManifest, JobSpec, ResolvedSpec, Status, now
from backend.products.catalog import Catalog
from backend.storage import ObjectMissing, StorageError

log = logging.getLogger("showroom.jobs")
DELETE_WAIT_S = 3            # a delete's wait for a canceled running batch (late writes are removed as reported)
SWEEP_AGAIN_S = (2.0, 30.0)  # late writes of a deleted job (a preview in flight) are removed by these sweeps


class JobService:
    def __init__(self, settings, catalog: Catalog, store: ManifestStore, executor: Executor, default_size: int,
                 preparer: Preparer | None = None, runs_elsewhere: Callable[[str], str | None] | None = None):
        self.settings, self.catalog, self.store, self.executor = settings, catalog, store, executor
        self.preparer = preparer
        self.runs_elsewhere = runs_elsewhere  # the live backend on the bucket whose job this is (Leases)
        self.storage = store.quick  # a client waits on every call made here
        self.default_size = default_size
        self._idem_locks = [threading.Lock() for _ in range(64)]  # striped: keys do not wait on each other
        self._admission, self._reserved = threading.Lock(), 0.0

    # ----- resolving a spec -----
    def resolve(self, spec: JobSpec, photo_size: tuple[int, int] | None = None) -> ResolvedSpec:
        template = self.catalog.template(spec.template) if spec.template else None
        product = self.catalog.product(spec.product) if spec.product else None
        for extra in spec.loras:
            if not self.catalog.lora_exists(extra.name):
                raise UnknownReference(f"unknown LoRA {extra.name!r}; add it with POST /v1/products")
        if spec.webhook:
            check_url(spec.webhook, self.settings.webhook_allowed_hosts)
        resolved = specs.resolve(spec, template=template, product=product, native=self.native_size(),
                                 photo_size=photo_size)
        if resolved.cost > self.settings.max_job_cost:
            raise InvalidRequest(
                f"this job is {resolved.cost:g} images' worth of work ({resolved.num_images} x {resolved.width}x"
                f"{resolved.height} at {resolved.steps} steps, counted in 512x512 30-step images); the limit is "
                f"MAX_JOB_COST={self.settings.max_job_cost:g}: ask for fewer, smaller or shorter images")
        return resolved

    def _storage_answers(self) -> None:
        """Refuse in seconds while storage is failing (the writer's word, checked by a short probe): a submit
        would only wait for its own time-outs, holding a request thread, and could not be kept anyway."""
        if not self.store.storage_answers():
            raise Unavailable(f"storage is unreachable ({self.store.storage_error or 'no answer'}); nothing was "
                              "queued, try again shortly", headers={"Retry-After": "5"})

    def native_size(self) -> int:
        return self.executor.native_size or self.default_size

    def loras_for(self, spec: ResolvedSpec) -> tuple[LoraTask, ...]:
        loras = []
        if spec.product:
            product = self.catalog.product(spec.product)
            if product.has_lora:
                loras.append(LoraTask(product.name, product.weight, lora_key(product.name)))
        loras += [LoraTask(x.name, x.weight, lora_key(x.name)) for x in spec.loras]
        return tuple(loras)

    # ----- the verbs -----
    def submit(self, spec: JobSpec, photo: bytes | None = None, idempotency_key: str | None = None,
               client: str = "") -> JobManifest:
        self._storage_answers()
        if idempotency_key:
            record = self._idem_key(idempotency_key, client)
            request = _fingerprint(spec, photo)
            with self._idem_lock(record):  # one submission per key at a time, so a retry never races the first
                earlier = self._idempotent(idempotency_key, client, request)
                if earlier:
                    return earlier
                # The record is written before the manifest: a job that exists always has it, so a
                # retry can never start a second one. A record whose manifest never came is ignored.
                return self._submit(spec, photo, record, request)
        return self._submit(spec, photo)

    def _submit(self, spec: JobSpec, photo: bytes | None, record: str | None = None,
                request: str = "") -> JobManifest:
        if self.executor.hopeless():
            raise Unavailable(f"generation is unavailable: {self.executor.last_error()}")
        png, photo_size = None, None
        if photo is not None:
            try:
                png, photo_size = normalize_photo(photo, max_bytes=self.settings.max_upload_bytes,
                                                  max_pixels=self.settings.max_upload_pixels)
            except BadImage as e:
                raise InvalidRequest(str(e)) from None
        resolved = self.resolve(spec, photo_size)
        with self._admitted(resolved.cost, lambda pending: QueueFull(
                f"the queue is full ({pending:g} images' worth of work waiting); try again shortly",
                headers={"Retry-After": "10"})):
            return self._store_and_queue(resolved, png, record, request)

    @contextmanager
    def _admitted(self, cost: float, refusal):
        """Room in the queue, reserved until the work is the executor's: submits that race each other (a
        manifest write takes a while) cannot all see an empty queue and pass the bound together."""
        with self._admission:
            pending = self.executor.pending_cost() + self._reserved
            if pending + cost > self.settings.queue_max_images:
                raise refusal(pending)
            self._reserved += cost
        try:
            yield
        finally:
            with self._admission:
                self._reserved -= cost

    def _store_and_queue(self, resolved: ResolvedSpec, png: bytes | None, record: str | None,
                         request: str = "") -> JobManifest:
        job = self._new_job(resolved, with_photo=png is not None)
        job_id = job.id
        loras = self.loras_for(resolved)
        if png:
            self.storage.put(job.input_key, png, "image/png")
        if record:
            self.storage.put(record, f"{job_id} {request}".encode(), "text/plain")  # the job, and what asked
        if not self.store.create(job):
            self._discard_later(job, record)
            raise Unavailable("storage is unreachable; nothing was queued, try again shortly")
        self.enqueue(job, loras, laid_out=False)
        log.info("job %s queued: %d images, %s, %dx%d, %d steps, product=%s, template=%s", job_id,
                 resolved.num_images, resolved.mode, resolved.width, resolved.height, resolved.steps,
                 resolved.product, resolved.template)
        return job

    def submit_batch(self, batch: list[JobSpec]) -> list[JobManifest]:
        """Several jobs admitted whole or not at all: every spec is resolved (422 naming its index), the
        queue must take them all (429), and a storage failure half-way removes what was written (503)."""
        self._storage_answers()
        if self.executor.hopeless():
            raise Unavailable(f"generation is unavailable: {self.executor.last_error()}")
        resolved = []
        for i, spec in enumerate(batch):
            try:
                resolved.append(self.resolve(spec))
            except ShowroomError as e:
                raise InvalidRequest(f"jobs[{i}]: {e.detail}") from None
        images, cost = sum(r.num_images for r in resolved), sum(r.cost for r in resolved)
        with self._admitted(cost, lambda pending: QueueFull(
                f"the queue cannot take {images} more images ({cost:g} images' worth of work; {pending:g} waiting, "
                f"at most {self.settings.queue_max_images}); send a smaller batch or try again shortly",
                headers={"Retry-After": "10"})):
            return self._store_and_queue_all(resolved, images)

    def _store_and_queue_all(self, resolved: list[ResolvedSpec], images: int) -> list[JobManifest]:
        jobs = [self._new_job(spec) for spec in resolved]
        # looked up before anything is written, as for one job: a product deleted while the manifests are
        # written must not fail the batch after they are stored (its jobs left queued with nothing to run them)
        loras = [self.loras_for(spec) for spec in resolved]
        for n, job in enumerate(jobs):
            if not self.store.create(job):
                for written in jobs[:n + 1]:
                    self.store.forget(written.id)
                    self._discard_later(written, None)
                raise Unavailable("storage is unreachable; nothing was queued, try again shortly")
        for job, job_loras in zip(jobs, loras):
            self.enqueue(job, job_loras, laid_out=False)
        log.info("batch of %d jobs queued (%d images)", len(jobs), images)
        return jobs

    def _new_job(self, resolved: ResolvedSpec, with_photo: bool = False) -> JobManifest:
        job_id, stamp = new_job_id(), now()
        return JobManifest(
            id=job_id, created_at=stamp, updated_at=stamp, status=Status.queued, spec=resolved,
            input_key=input_key(job_id) if with_photo else None,
            layout_key=layout_key(job_id) if resolved.mode == "place" else None,
            images=[ImageRecord(index=i, key=image_key(job_id, i), seed=resolved.seed + i)
                    for i in range(resolved.num_images)],
        )

    def enqueue(self, job: JobManifest, loras: tuple, laid_out: bool | None = None) -> None:
        """Hand a stored job to the executor; a `place` job is laid out first, once (`laid_out`: known
        already, or None to look in storage)."""
        if job.layout_key and not (laid_out if laid_out is not None else self.storage.exists(job.layout_key)):
            self.preparer.start(job, lambda error: self._prepared(job.id, loras, error))
        else:
            self.executor.submit(job, loras)

    def _prepared(self, job_id: str, loras: tuple, error: Exception | None) -> None:
        if self.store.was_deleted(job_id):  # its cut-out and layout landed after the delete's sweeps
            self._sweep(job_id)
            return
        if error is not None:
            reason = str(error) if isinstance(error, ValueError) else f"the product could not be laid out: {error}"
            log.warning("job %s: %s", job_id, reason)
            self.store.update(job_id, lambda job: _fail_rest(job, reason[:500]))
            return
        with self.store.job_lock(job_id):  # a cancel while it was prepared is seen here, and sticks
            job = self.store.get(job_id)
            if not job.status.is_terminal():
                self.executor.submit(job, loras)

    def _discard_later(self, job: JobManifest, record: str | None) -> None:
        """The client is answered at once; the clean-up waits on storage in the background. The job counts
        as deleted from now on: a retry that comes before the clean-up must not get its ticket (nothing runs
        it) from a manifest that landed despite its error."""
        self.store.forget(job.id)
        threading.Thread(target=self._discard, args=(job, record), name=f"discard-{job.id}", daemon=True).start()

    def _discard(self, job: JobManifest, record: str | None) -> None:
        """After a failed manifest write, remove what may have landed all the same (a write can fail
        after storing), so neither a retry nor a later start-up finds a job that was never queued."""
        for key in (job.manifest_key, job.input_key):  # and the record and the index entries, below
            if key:
                try:
                    self.storage.delete(key)
                except StorageError as e:
                    log.warning("job %s: could not remove %s after a failed submit: %s", job.id, key, e)
        if record:
            with self._idem_lock(record):  # a retry may have written it again, for its own job, meanwhile
                try:
                    if self.storage.get(record).decode().partition(" ")[0] == job.id:  # "<job id> <request>"
                        self.storage.delete(record)
                except ObjectMissing:
                    pass
                except StorageError as e:
                    log.warning("job %s: could not remove %s after a failed submit: %s", job.id, record, e)
        try:
            self.store.unindex(job.id)
        except StorageError as e:
            log.warning("job %s: index entries left after a failed submit (skipped when read): %s", job.id, e)

    def _idem_lock(self, record: str) -> threading.Lock:
        return self._idem_locks[hash(record) % len(self._idem_locks)]

    def _idem_key(self, key: str, client: str) -> str:
        return f"idempotency/{hashlib.sha256(f'{client}|{key}'.encode()).hexdigest()}"

    def _idempotent(self, key: str, client: str, request: str) -> JobManifest | None:
        if len(key) > 255:
            raise InvalidRequest("Idempotency-Key must be at most 255 characters")
        try:
            job_id, _, first = self.storage.get(self._idem_key(key, client)).decode().partition(" ")
        except ObjectMissing:
            return None
        try:
            job = self.get(job_id)
        except NotFound:
            return None  # the first try stopped before its manifest was written: nothing was started
        if first and first != request:  # a record written before requests were kept names none: a retry
            raise InvalidRequest(f"this Idempotency-Key was first sent with another request (job {job_id}); a "
                                 "retry must send the same spec and photo, and a new request needs a new key")
        log.info("idempotent retry for job %s", job_id)
        return job

    def get(self, job_id: str) -> JobManifest:
        try:
            return self.store.get(job_id)
        except ObjectMissing:
            raise NotFound(f"no job {job_id!r}") from None

    def list(self, limit: int, before: str | None = None) -> list[JobManifest]:
        return self.store.recent(limit, before)

    def cancel(self, job_id: str) -> JobManifest:
        """Drop what waits, interrupt what runs; a job an earlier run left (not held here) is canceled in
        its manifest."""
        job = self.get(job_id)
        if job.status.is_terminal():
            return job
        with self.store.job_lock(job_id):  # against recovery handing the job to the executor meanwhile
            held = self.executor.cancel(job_id)  # waiting images are reported canceled before it returns
            if not held and self.runs_elsewhere and (owner := self.runs_elsewhere(job_id)):
                # its manifest written here would be overwritten by that backend's next change, undoing this
                raise Conflict(f"job {job_id} runs on another backend that shares this storage ({owner}): cancel "
                               "or delete it through that backend; this one takes the job over only once that "
                               "one stops")
            job = self.store.get(job_id) if held else self.store.update(job_id, _cancel_rest)
        log.info("job %s cancel requested", job_id)
        return job


    def delete(self, job_id: str) -> None:
        """Cancel the job if it runs, then remove every object under jobs/<id>/. What a worker was still
        writing (a last preview, an image finishing as the cancel came) is swept up again shortly after."""
        try:
            job = self.get(job_id)
        except ValueError:  # a manifest that cannot be read (cut short, another version's, edited by hand)
            log.warning("job %s: its manifest is unreadable; deleting its objects all the same", job_id)
            job = None
        if job is not None and not job.status.is_terminal():
            self.cancel(job_id)
            deadline = time.monotonic() + DELETE_WAIT_S
            while self.executor.holds(job_id) and time.monotonic() < deadline:
                time.sleep(0.05)
        self.store.forget(job_id)
        for delay in SWEEP_AGAIN_S:  # set first: they also remove what a storage failure just below leaves
            timer = threading.Timer(delay, self._sweep, args=(job_id, True))
            timer.daemon = True
            timer.start()
        self.store.unindex(job_id)
        self._sweep(job_id)
        log.info("job %s deleted", job_id)

    def _sweep(self, job_id: str, unindex: bool = False) -> None:
        if unindex:  # the job is 404 already: its index entries must not outlive a failed first try
            try:
                self.store.unindex(job_id)
            except StorageError as e:
                log.warning("job %s: index entries left after delete (%s); the next sweep tries again", job_id, e)
        try:
            self.storage.delete_prefix(job_prefix(job_id))
        except StorageError as e:
            log.warning("job %s: objects left after delete (%s); the next sweep tries again", job_id, e)


def _fail_rest(job: JobManifest, reason: str) -> None:
    for img in job.images:
        if not img.status.is_terminal():
            img.failed(reason)


def _cancel_rest(job: JobManifest) -> None:
    for img in job.images:
        if not img.status.is_terminal():
            img.canceled()


def _fingerprint(spec: JobSpec, photo: bytes | None) -> str:
    """What a submission asked for, as its retry must ask it again: the spec as parsed (so the JSON's own
    spacing and key order do not count) and the photo's bytes."""
    digest = hashlib.sha256(spec.model_dump_json().encode())
    digest.update(hashlib.sha256(photo).digest() if photo is not None else b"no photo")
    return digest.hexdigest()
