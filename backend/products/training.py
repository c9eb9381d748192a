"""Teaching Showroom a product: a LoRA trained from its photos on a GPU worker, through the executor.

It trains on MODEL_ID itself (SD 1.x/2.x or SDXL) at the model's native size (512 for SD 1.5, 1024 for SDXL),
the size its jobs are made at.

The photos are stored under trainings/<id>/, the TrainingManifest is written by its own manifest
store (the one writer), and the executor's Training* events move it along. Only a training that
succeeds touches the product: its LoRA is copied to products/<name>.safetensors (checked like an
upload, keeping what the trained file's metadata says about it) and `has_lora` becomes true. A failed
training leaves the product as it was.
"""

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from backend.contract import (
    TRAINING_PHOTOS,
    check_name,
    check_spec,
    created_us,
    lora_key,
    new_job_id,
    training_owner_key,
)
from backend.errors import Conflict, InvalidRequest, NotFound, RateLimited, Unavailable, UnknownReference
from backend.gpu import executor as ev
from backend.gpu.messages import TrainTask
from backend.images import BadImage, normalize_photo
from backend.jobs.manifests import ManifestStore
from backend.lora.check import normalize_lora
from backend.lora.worker_training import lora_result_key
from backend.models import JobSpec, Status, StepProgress, TrainingManifest, now
from backend.products.catalog import Catalog
from backend.storage import ObjectMissing, StorageError

log = logging.getLogger("showroom.training")
MIN_PHOTOS, MAX_PHOTOS = TRAINING_PHOTOS
# A training photo's short side is kept to this: SDXL's 1024 px views, cut from crops of 60 %, still lose no
# detail, and a 40 MP photo is not held whole (about 100 MB as a PNG, up to 40 of them in one request).
PHOTO_SHORT_SIDE = 2048
AT_ONCE = 4  # unfinished trainings a backend takes; more are told to retry (each holds a GPU for up to hours)
# SD 1.x at 512 px: about 4-8 minutes on a rented 4090; SDXL at 1024 px: about 4x that (both estimated)
DEFAULT_STEPS, DEFAULT_RANK = 800, 16
STOPPED_BY_OWNER = "stopped by its owner; the product is as it was"


def photo_key(training_id: str, n: int) -> str:
    return f"trainings/{training_id}/{n}.png"


def normalize_photos(photos: list[bytes], settings) -> list[bytes]:
    """Photos to learn from, as stored: each checked by its content and made a clean PNG, its short side at most
    PHOTO_SHORT_SIDE. InvalidRequest names the first bad one ("photo 3: ..."). Also what a product keeps of the
    photos it was added with (Catalog.add_product), so those pass a training's checks as they are."""
    pngs = []
    for n, data in enumerate(photos, start=1):
        try:
            pngs.append(normalize_photo(data, max_bytes=settings.max_upload_bytes,
                                        max_pixels=settings.max_upload_pixels, max_short_side=PHOTO_SHORT_SIDE)[0])
        except BadImage as e:
            raise InvalidRequest(f"photo {n}: {e}") from None
    return pngs


class TrainingService:
    def __init__(self, settings, catalog: Catalog, store: ManifestStore, executor, native_size,
                 start_check: Callable[[str], str] | None = None):
        self.settings, self.catalog, self.store, self.executor = settings, catalog, store, executor
        self.native_size = native_size  # () -> int: the size the model generates (and so learns) at
        self.start_check = start_check  # product -> the id of a job of test pictures of it (check_job below)
        self.storage = store.storage
        self.owner = ""  # this backend's lease owner id (backend.jobs.leases), written beside each training
        # unfinished trainings this run sent to the executor (its own, and those it took back) -> their product
        self._active: dict[str, str] = {}
        self._adopting: set[str] = set()  # finished trainings whose LoRA is being given to their product
        self._admit = threading.Lock()  # a product's training and the count are checked and taken at once
        self._finishing = ThreadPoolExecutor(1, thread_name_prefix="training-done")  # storage I/O off the dispatcher

    def close(self) -> None:
        self._finishing.shutdown(wait=True, cancel_futures=False)

    def submit(self, name: str, photos: list[bytes], steps: int | None, rank: int | None) -> TrainingManifest:
        try:
            product = self.catalog.product(check_name("product", name))
        except (UnknownReference, ValueError):
            raise NotFound(f"no product {name!r}; add it with POST /v1/products first") from None
        if not MIN_PHOTOS <= len(photos) <= MAX_PHOTOS:
            raise InvalidRequest(f"a training needs {MIN_PHOTOS} to {MAX_PHOTOS} photos of the product, "
                                 f"got {len(photos)}")
        pngs = normalize_photos(photos, self.settings)
        training_id, stamp = new_job_id(), now()
        steps, rank = steps or DEFAULT_STEPS, rank or DEFAULT_RANK
        with self._admit:
            if name in self._active.values():
                raise InvalidRequest(f"product {name!r} is being trained already; wait for it to finish")
            self._refuse_if_busy(product)
            if len(self._active) >= AT_ONCE:
                raise RateLimited(f"{AT_ONCE} trainings are running or waiting already; try again once one is done",
                                  headers={"Retry-After": "600"})
            self._active[training_id] = name
        try:
            return self._start(training_id, stamp, name, product, pngs, steps, rank)
        except BaseException:
            self._active.pop(training_id, None)
            raise

    def _start(self, training_id, stamp, name, product, pngs, steps, rank) -> TrainingManifest:
        for n, png in enumerate(pngs):
            self.storage.put(photo_key(training_id, n), png, "image/png")
        self.storage.put(training_owner_key(training_id), self.owner.encode(), "text/plain")
        training = TrainingManifest(id=training_id, product=name, progress=StepProgress(step=0, steps=steps),
                                    created_at=stamp, updated_at=stamp, photos=len(pngs), rank=rank,
                                    resolution=self.native_size(), earlier_check_job=self._earlier_check(product))
        if not self.store.create(training):
            raise Unavailable("storage is unreachable; nothing was queued, try again shortly")
        try:
            self.catalog.update(name, training=training_id)
        except Exception as e:  # the client gets no id: the training it would name must not wait for ever
            reason = f"not started: {getattr(e, 'detail', None) or e}"
            self.store.update(training_id, lambda t: _fail(t, reason))
            if isinstance(e, UnknownReference):
                raise NotFound(f"product {name!r} was deleted; add it again with POST /v1/products") from None
            raise
        self.executor.train(self._task(training, product.trigger))
        log.info("training %s of %s queued: %d photos, %d steps, rank %d", training_id, name, len(pngs), steps, rank)
        return training

    def get(self, training_id: str) -> TrainingManifest:
        try:
            return self.store.get(training_id)
        except (ObjectMissing, ValueError):
            raise NotFound(f"no training {training_id!r}") from None

    def cancel(self, training_id: str) -> TrainingManifest:
        """Stop a training its owner no longer wants (the wrong photos, too many steps): it ends `canceled` at
        once and its GPU is free at its next step; the product stays as it was. A training that ended already is
        answered as it is; one another backend on the bucket runs is refused (Conflict): its manifest is that
        backend's to write."""
        training = self.get(training_id)
        if training.status.is_terminal():
            return training
        with self._admit:
            ours = self._active.pop(training_id, None) is not None
            if not ours and training_id in self._adopting:  # it finished: its product has the LoRA in a moment
                return training
        if not ours:
            raise Conflict(f"training {training_id} runs on another backend that shares this storage: stop it "
                           "there, or delete its product")
        done = self._change(training_id, status=Status.canceled, error=STOPPED_BY_OWNER)
        self.executor.stop_training(training_id, STOPPED_BY_OWNER)  # whatever it reports now finds it ended
        log.info("training %s of %s canceled by its owner", training_id, training.product)
        return done

    def resume_unfinished(self, booted_us: int, leases=None) -> int:
        """Trainings an earlier run left queued or running go on from their checkpoints: at start-up, and
        whenever a backend on the bucket went away. One that a live backend runs is left to it (`leases`)."""
        taken = 0
        for training_id in self.store.ids():
            if created_us(training_id) >= booted_us or training_id in self._active:
                continue  # this run's own, or one it took back already
            try:
                training = self.store.get(training_id)
            except (ObjectMissing, ValueError):
                continue
            if training.status.is_terminal():
                continue
            if leases is not None and not leases.claim_training(training_id):
                continue
            try:
                product = self.catalog.product(training.product)
            except UnknownReference:
                product = None
            if product is None or product.training != training_id:  # deleted (and perhaps added again since)
                self.store.update(training_id, lambda t: _fail(t, "the product was deleted"))
                continue
            trigger = product.trigger
            if self._change(training_id, status=Status.queued).status.is_terminal():
                continue  # it ended meanwhile (an event read from the executor's backlog)
            self._active[training_id] = training.product
            self.executor.train(self._task(training, trigger))
            log.info("training %s of %s taken back: it goes on from its newest checkpoint", training_id,
                     training.product)
            taken += 1
        return taken

    # ----- the executor's events -----
    def product_deleted(self, name: str) -> None:
        """Its trainings here stop where they are: the LoRA they would make is not kept (see _adopt), and a
        training holds a GPU for minutes to hours."""
        with self._admit:
            stopping = [training_id for training_id, product in self._active.items() if product == name]
        for training_id in stopping:
            log.info("training %s stops: its product %s was deleted", training_id, name)
            self.executor.stop_training(training_id, f"product {name!r} was deleted while it trained; "
                                                     "the training was stopped")

    def on_event(self, event: ev.TrainingEvent) -> None:
        match event:
            case ev.TrainingStarted(training_id, worker):
                self._change(training_id, status=Status.running, worker=worker, error=None)
            case ev.TrainingProgress(training_id, step, steps, loss):
                self._change(training_id, progress=StepProgress(step=step, steps=steps),
                             loss=round(loss, 6) if loss is not None else None)
            case ev.TrainingRequeued(training_id, reason):
                self._change(training_id, status=Status.queued, error=f"{reason}; resuming from the last checkpoint")
            case ev.TrainingSucceeded(training_id, info):
                with self._admit:
                    self._active.pop(training_id, None)
                    self._adopting.add(training_id)
                self._finishing.submit(self._adopt, training_id, info)
            case ev.TrainingFailed(training_id, error):
                self._active.pop(training_id, None)
                self._change(training_id, status=Status.failed, error=error)

    def _adopt(self, training_id: str, info: dict) -> None:
        """The trained LoRA becomes the product's, checked as an upload is; then the training has succeeded."""
        try:
            self._give_lora(training_id, info)
        finally:
            with self._admit:
                self._adopting.discard(training_id)

    def _give_lora(self, training_id: str, info: dict) -> None:
        training = self.store.get(training_id)
        if training.status.is_terminal():  # told twice (a copy of its last chunk): the product has its LoRA
            return
        gone = f"product {training.product!r} was deleted while it trained; its LoRA was not kept"
        try:
            if not self._trains(training):  # deleted, or deleted and added again: not the product it learnt
                self._change(training_id, status=Status.failed, error=gone)
                return
            trained = self.storage.get(lora_result_key(training_id))
            # titled as the product: the trained file is named after the worker's own file, lora.safetensors
            lora = normalize_lora(trained, self.settings.model_id, title=training.product)
            self.storage.put(lora_key(training.product), lora, "application/octet-stream")
            self.catalog.update(training.product, if_training=training_id, has_lora=True)
        except UnknownReference:  # deleted while it was stored: the LoRA just stored must not outlive it
            self._drop_orphan(training.product)
            self._change(training_id, status=Status.failed, error=gone)
            return
        except (StorageError, ValueError) as e:
            log.error("training %s: the LoRA could not be given to %s: %s", training_id, training.product, e)
            self._change(training_id, status=Status.failed, error=f"the trained LoRA could not be stored: {e}")
            return
        self._change(training_id, status=Status.succeeded, error=None,
                     progress=StepProgress(step=training.progress.steps, steps=training.progress.steps),
                     resumed_from=info.get("resumed_from"), probe_loss=info.get("probe_loss"),
                     product_found=info.get("product_found"), step_s=info.get("step_s"),
                     device=info.get("device"),
                     check_job=self._check(training.product))
        log.info("training %s succeeded: product %s has its LoRA", training_id, training.product)

    def _check(self, product: str) -> str | None:
        """Four test pictures of the product that has just learnt, so its owner sees what it learnt without asking;
        a queue that cannot take them (or anything else) costs the pictures, never the training."""
        if self.start_check is None:
            return None
        try:
            return self.start_check(product)
        except Exception as e:  # the LoRA is the product's already: the pictures are a courtesy
            log.warning("the test pictures of %s were not started: %s", product, getattr(e, "detail", None) or e)
            return None

    def _trains(self, training: TrainingManifest) -> bool:
        """Whether the training's product is still there and still the one it learns: a product deleted and
        added again under the same name (its `training` is no longer this one) is another product."""
        try:
            return self.catalog.product(training.product).training == training.id
        except UnknownReference:
            return False

    def _drop_orphan(self, product: str) -> None:
        try:
            self.storage.delete(lora_key(product))
        except StorageError as e:
            log.error("the LoRA of deleted product %s could not be removed: %s", product, e)

    def _change(self, training_id: str, **fields) -> TrainingManifest:
        def change(training: TrainingManifest) -> None:
            if not training.status.is_terminal():
                for name, value in fields.items():
                    setattr(training, name, value)

        return self.store.update(training_id, change)

    # ----- helpers -----
    def _task(self, training: TrainingManifest, trigger: str) -> TrainTask:
        steps = training.progress.steps
        return TrainTask(task_id=0, training_id=training.id, trigger=trigger,
                         photo_keys=tuple(photo_key(training.id, n) for n in range(training.photos)), steps=steps,
                         rank=training.rank, resolution=training.resolution,
                         checkpoint_every=max(1, min(100, steps // 5)))

    def _earlier_check(self, product) -> str | None:
        """The test pictures of the LoRA the product has now, which it keeps until this training succeeds (and
        for good if it fails or is stopped): its owner goes on seeing what the product can do meanwhile."""
        if not product.has_lora or not product.training:
            return None
        try:
            earlier = self.store.get(product.training)
        except (ObjectMissing, StorageError, ValueError):
            return None
        return earlier.check_job if earlier.status is Status.succeeded else earlier.earlier_check_job

    def _refuse_if_busy(self, product) -> None:
        if not product.training:
            return
        try:
            earlier = self.store.get(product.training)
        except (ObjectMissing, ValueError):
            return
        if not earlier.status.is_terminal():
            raise InvalidRequest(f"product {product.name!r} is being trained already (training {earlier.id}, "
                                 f"{earlier.status.value}); wait for it to finish")


def check_job(jobs, catalog: Catalog, product: str) -> str:
    """Start four test pictures of a product (backend.contract.check_spec, as the app's "Make 4 test pictures"):
    the id of their job."""
    return jobs.submit(JobSpec(**check_spec(product, catalog.templates))).id


def _fail(training: TrainingManifest, error: str) -> None:
    training.status, training.error = Status.failed, error
