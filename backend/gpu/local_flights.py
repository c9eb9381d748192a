"""What the local scheduler holds, what becomes of a dead worker's work, and the events it hands to the sink.

A job is held from its submit until none of its images is open; its images wait in `pending` until the
dispatcher (backend.gpu.scheduler) gives them to a worker, as upscales and trainings wait in theirs. What
a dead worker held (`Lost`) is settled here: an image stored already (its worker died between upload and
report) succeeded; else it is tried once more on another worker, or failed with the reason. An image
storage cannot tell about is never failed blind (its object may exist): it waits in `undecided` until
storage answers. A training resumes from its checkpoint on a fresh worker, twice at most.

The lock is the scheduler's: it guards the slots too, so that a cancel drops what waits and interrupts
what runs in one step. Storage is asked with no lock held, and the events are collected under it and
handed out once it is released (`deliver`), in order.
"""

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from backend.gpu import executor as ev
from backend.gpu.batches import HeldJob
from backend.gpu.worker_slot import Lost, Training, Upscale, Work
from backend.models import JobManifest, Status
from backend.storage import Storage, StorageError

log = logging.getLogger("showroom.scheduler")
MAX_ATTEMPTS = 2          # an image whose worker died is tried once more on another worker
MAX_TRAINING_ATTEMPTS = 3  # a training resumes from its checkpoint after a lost worker, twice
DECIDE_EVERY_S = 2.0      # how often images whose fate waits on storage are looked at again


class LocalFlights:
    """Used from the request threads (submit, cancel, ...) and the dispatcher thread. The caller holds the
    scheduler's lock for every method but `settle`, `decide_undecided` and `deliver`, which take it around
    memory only, and the pending counts, which need none. `hopeless()` says whether no worker will ever
    start again: nothing is retried then."""

    def __init__(self, storage: Storage, on_event: ev.EventSink, lock: threading.RLock,
                 hopeless: Callable[[], bool]):
        self.storage, self.on_event, self.lock, self.hopeless = storage, on_event, lock, hopeless
        self.jobs: dict[str, HeldJob] = {}
        self.pending: deque[Work] = deque()
        self.upscales: deque[Upscale] = deque()
        self.trainings: deque[Training] = deque()
        self._outbox: list[ev.Event] = []
        self.undecided: list[tuple[Work, str]] = []  # lost images storage could not tell about (with the reason)
        self._decide_at = 0.0
        self._delivering = threading.Lock()

    def pending_images(self) -> int:
        return len(self.pending)  # len() of a deque is atomic: a submit never waits for the lock

    def pending_cost(self) -> float:
        return sum(w.cost for w in list(self.pending))  # list() copies the deque in one step under the GIL

    # ----- changes, under the lock -----
    def hold(self, job: JobManifest, loras: tuple) -> None:
        """The job's queued images wait for a worker; a job with none is not held."""
        queued = [img.index for img in job.images if img.status == Status.queued]
        self.jobs[job.id] = HeldJob(job.model_copy(deep=True), loras, set(queued))
        self.pending.extend(Work(job.id, index, cost=job.spec.image_cost) for index in queued)
        if not queued:
            del self.jobs[job.id]

    def cancel(self, job_id: str) -> bool:
        """Mark the job canceled and cancel its images that wait; False for a job not held."""
        held = self.jobs.get(job_id)
        if held is None:
            return False
        held.canceled = True
        waiting = tuple(w.index for w in self.pending if w.job_id == job_id)
        self.pending = deque(w for w in self.pending if w.job_id != job_id)
        if waiting:
            self.close(job_id, waiting, ev.ImagesCanceled(job_id, waiting))
        return True

    def drop_training(self, training_id: str, reason: str) -> None:
        """A training that waits is dropped, and ends failed with `reason`."""
        waiting = next((t for t in self.trainings if t.task.training_id == training_id), None)
        if waiting is not None:
            self.trainings.remove(waiting)
            self.emit(ev.TrainingFailed(training_id, reason))

    def fail_upscales(self, error: str) -> None:
        for upscale in self.upscales:
            upscale.future.set_exception(RuntimeError(error))
        self.upscales.clear()

    def fail_waiting(self, error: str) -> None:
        """Fail all that waits for a worker, with `error`."""
        while self.pending:
            w = self.pending.popleft()
            self.close(w.job_id, (w.index,), ev.ImageFailed(w.job_id, w.index, error))
        while self.upscales:
            self.upscales.popleft().future.set_exception(RuntimeError(error))
        while self.trainings:
            self.emit(ev.TrainingFailed(self.trainings.popleft().task.training_id, error))

    def emit(self, event: ev.Event) -> None:
        self._outbox.append(event)  # under the lock; delivered once it is released

    def close(self, job_id: str, indices: tuple[int, ...], event: ev.Event) -> None:
        """Report images as terminal and forget the job once none of its images is open."""
        self.emit(event)
        held = self.jobs.get(job_id)
        if held is not None:
            held.open.difference_update(indices)
            if not held.open:
                del self.jobs[job_id]

    # ----- a dead worker's work, without the lock -----
    def settle(self, lost: Lost) -> None:
        """A dead worker's images: stored already (it died between upload and report) → succeeded; else
        tried once more, or failed with the reason. Storage is asked with no lock held; an image storage
        cannot tell about is never failed blind (its object may exist): it is decided once storage answers."""
        if lost.upscale is not None:
            lost.upscale.future.set_exception(RuntimeError(f"the local upscaler's worker stopped: {lost.reason}"))
        if lost.training is not None:
            self._training_lost(lost.training, lost)
        stored = {(w.job_id, w.index): self._already_stored(w) for w in lost.work}
        with self.lock:
            for w in lost.work:
                error = lost.reason if w.attempts < MAX_ATTEMPTS else f"{lost.reason}; it was the second try"
                retry = not lost.killed and w.attempts < MAX_ATTEMPTS and not self.hopeless()
                if self._decide(w, stored[w.job_id, w.index], error, retry):
                    log.warning("job %s image %d: storage cannot say whether it was stored; decided when it "
                                "answers", w.job_id, w.index)

    def decide_undecided(self) -> None:
        """Images whose fate waited on storage: stored → succeeded, else failed (or canceled) as they would have."""
        if not self.undecided or time.monotonic() < self._decide_at:
            return
        self._decide_at = time.monotonic() + DECIDE_EVERY_S
        with self.lock:
            waiting, self.undecided = self.undecided, []
        answers = [(w, error, self._already_stored(w)) for w, error in waiting]
        with self.lock:
            for w, error, known in answers:
                self._decide(w, known, error)

    def _decide(self, w: Work, known: bool | None, error: str, retry: bool = False) -> bool:
        """Under the lock, a lost image that is still open: stored (`known`) → succeeded; else tried once more
        when `retry` and not canceled; else, when storage could not say, kept undecided (True); else canceled,
        or failed with `error`."""
        held = self.jobs.get(w.job_id)
        if held is None or w.index not in held.open:
            return False
        if known:
            self.close(w.job_id, (w.index,), ev.ImageSucceeded(w.job_id, w.index))
        elif retry and not held.canceled:
            self.emit(ev.ImagesRequeued(w.job_id, (w.index,)))  # a new try overwrites whatever landed
            self.pending.appendleft(w)
        elif known is None:
            self.undecided.append((w, error))
            return True
        elif held.canceled:
            self.close(w.job_id, (w.index,), ev.ImagesCanceled(w.job_id, (w.index,)))
        else:
            self.close(w.job_id, (w.index,), ev.ImageFailed(w.job_id, w.index, error))
        return False

    def _training_lost(self, training: Training, lost: Lost) -> None:
        """A training whose worker died resumes from its last checkpoint on a fresh worker, twice at most."""
        with self.lock:
            if (not lost.killed and not training.stopped and training.attempts < MAX_TRAINING_ATTEMPTS
                    and not self.hopeless()):
                self.trainings.appendleft(training)
                self.emit(ev.TrainingRequeued(training.task.training_id, lost.reason))
            else:
                self.emit(ev.TrainingFailed(training.task.training_id, training.stopped or lost.reason))

    def _already_stored(self, w: Work) -> bool | None:
        """Whether the image's object exists; None when storage cannot say."""
        held = self.jobs.get(w.job_id)
        if held is None:
            return False
        try:
            return self.storage.exists(held.job.images[w.index].key)
        except StorageError:
            return None

    # ----- handing out -----
    def deliver(self) -> None:
        """Hand the events out in order, outside the lock (the sink may take its own locks)."""
        with self._delivering:
            with self.lock:
                events, self._outbox = self._outbox, []
            for event in events:
                try:
                    self.on_event(event)
                except Exception:
                    log.exception("an event could not be applied: %r", event)
