"""The jobs EXECUTOR=celery has in flight, and the events it hands to the sink, in order.

A job is in flight from its submit until none of its images is open. Images a node reported started are
told apart from those still in the broker, which a cancel ends at once; an image stored after its cancel
was reported is removed; an image a node could not decide waits here until storage answers. The ids of
jobs in flight are listed in Redis (HELD): the executor adds a job as it sends it, the job leaves once
its last event is handed out, and a backend that starts takes the list back (`adopt`).
"""

import logging
import threading
import time
from dataclasses import dataclass, field

import redis

from backend.contract import image_key, job_prefix, manifest_key
from backend.gpu import celery_app as ca
from backend.gpu import executor as ev
from backend.gpu.batches import HeldJob
from backend.models import JobManifest, Status
from backend.storage import ObjectMissing, StorageError

log = logging.getLogger("showroom.celery")


@dataclass
class Flight:
    """A job with images in the broker or on a node."""
    held: HeldJob
    started: set[int] = field(default_factory=set)  # open images a node has reported started
    canceled: bool = False
    undecided: dict[int, str] = field(default_factory=dict)  # open images whose fate waits on storage: reason


class Flights:
    """Used from the request threads (submit, cancel) and the executor's event thread. Its lock guards
    memory only: the events are collected under it and handed out once it is released."""

    def __init__(self, client: redis.Redis, storage, on_event: ev.EventSink):
        self.redis, self.storage, self.on_event = client, storage, on_event
        self.lock = threading.Lock()
        self.jobs: dict[str, Flight] = {}
        self.removed_on_cancel: dict[tuple[str, int], float] = {}  # canceled before they started
        self._outbox: list = []  # events (and ("done", job id)) to hand out once the lock is released
        self._delivering = threading.Lock()

    def __contains__(self, job_id: str) -> bool:
        with self.lock:
            return job_id in self.jobs

    def __getitem__(self, job_id: str) -> Flight:
        with self.lock:
            return self.jobs[job_id]

    def add(self, held: HeldJob) -> None:
        with self.lock:
            self.jobs[held.job.id] = Flight(held)

    def pending_images(self) -> int:
        with self.lock:
            return sum(len(f.held.open - f.started) for f in self.jobs.values())

    def pending_cost(self) -> float:
        with self.lock:
            return sum(len(f.held.open - f.started) * f.held.job.spec.image_cost for f in self.jobs.values())

    def open_of(self, job_id: str, indices) -> tuple[set[int], bool]:
        """Which of a job's images in `indices` are still open here (none for a job not in flight), and
        whether the job was canceled."""
        with self.lock:
            flight = self.jobs.get(job_id)
            return ((flight.held.open & set(indices)), flight.canceled) if flight else (set(), False)

    # ----- changes -----
    def cancel(self, job_id: str) -> list[int] | None:
        """Mark the job canceled; returns its open images no node has started (None: not in flight)."""
        with self.lock:
            flight = self.jobs.get(job_id)
            if flight is None:
                return None
            flight.canceled = True
            return sorted(flight.held.open - flight.started)

    def canceled(self, job_id: str, waiting: list[int]) -> None:
        """Images canceled before a node started them: reported now, and removed if one is stored after all."""
        with self.lock:
            if waiting:  # a node that takes one of these later sees the flag and skips it
                self._outbox.append(ev.ImagesCanceled(job_id, tuple(waiting)))
            for index in waiting:
                self.removed_on_cancel[(job_id, index)] = time.monotonic()
                self._close(job_id, index, None)
        self.deliver()

    def fail(self, job_id: str, indices: list[int], reason: str) -> None:
        with self.lock:
            for index in indices:
                self._close(job_id, index, ev.ImageFailed(job_id, index, reason))
        self.deliver()

    def undecided(self, job_id: str, index: int, error: str) -> bool:
        """A node could not tell whether the image was stored: `reconcile` decides once storage answers.
        False for a job not in flight."""
        with self.lock:
            if job_id not in self.jobs:
                return False
            self.jobs[job_id].undecided[index] = error
            return True

    def apply(self, event: ev.Event) -> None:
        """An event a node reported: handed to the sink, and what is open updated."""
        deleted = None
        with self.lock:
            self._outbox.append(event)  # before the bookkeeping: a job leaves HELD only after its last event
            match event:
                case ev.ImagesStarted(job_id, indices) if job_id in self.jobs:
                    self.jobs[job_id].started.update(indices)
                case ev.ImagesRequeued(job_id, indices) if job_id in self.jobs:
                    self.jobs[job_id].started.difference_update(indices)
                case ev.ImageSucceeded(job_id, index) if (job_id, index) in self.removed_on_cancel:
                    deleted = self._image_key(job_id, index)
                case ev.ImageSucceeded(job_id, index) | ev.ImageFailed(job_id, index):
                    self._close(job_id, index, None)
                case ev.ImagesCanceled(job_id, indices):
                    for index in indices:
                        self._close(job_id, index, None)
        if deleted:
            self._remove(deleted)
        self.deliver()

    def _close(self, job_id: str, index: int, event) -> None:
        """Under the lock: image `index` is terminal; the job is forgotten once none is open."""
        if event is not None:
            self._outbox.append(event)
        flight = self.jobs.get(job_id)
        if flight is None:
            return
        flight.held.open.discard(index)
        flight.started.discard(index)
        if not flight.held.open:
            del self.jobs[job_id]
            self._outbox.append(("done", job_id))

    def deliver(self) -> None:
        """Hand the events out in order, outside the lock (the sink takes its own locks and writes storage)."""
        with self._delivering:
            with self.lock:
                items, self._outbox = self._outbox, []
            for item in items:
                if isinstance(item, tuple):  # a job no longer in flight
                    try:
                        self.redis.srem(ca.HELD, item[1])
                    except redis.RedisError as e:
                        log.warning("job %s stays listed in flight (%s); the next start checks it", item[1], e)
                    continue
                try:
                    self.on_event(item)
                except Exception:
                    log.exception("an event could not be applied: %r", item)

    def _image_key(self, job_id: str, index: int) -> str | None:
        flight = self.jobs.get(job_id)
        if flight is not None:
            return flight.held.job.images[index].key
        return image_key(job_id, index)

    def _remove(self, key: str) -> None:
        try:
            self.storage.delete(key)
            log.info("%s was stored after its cancel was reported: removed", key)
        except StorageError as e:
            log.warning("%s was stored after its cancel and could not be removed: %s", key, e)

    # ----- what storage holds -----
    def _read_manifest(self, job_id: str) -> JobManifest | None:
        try:
            return JobManifest.model_validate_json(self.storage.get(manifest_key(job_id)))
        except ObjectMissing:
            return None

    def adopt(self) -> None:
        """At start-up: the jobs an earlier run sent and did not see finish are in flight still."""
        for job_id in self.redis.smembers(ca.HELD):
            try:
                job = self._read_manifest(job_id)
            except (StorageError, ValueError) as e:
                log.warning("job %s: manifest unreadable at start-up (%s); start-up recovery decides", job_id, e)
                continue
            open_ = {img.index for img in job.images if not img.status.is_terminal()} if job else set()
            if not open_:
                self.redis.srem(ca.HELD, job_id)
                continue
            running = {img.index for img in job.images if img.status == Status.running}
            with self.lock:
                self.jobs[job_id] = Flight(HeldJob(job, (), open_), started=running)
            log.info("job %s is still in flight (%d images open)", job_id, len(open_))

    def reconcile(self) -> None:
        """Images of jobs in flight that are stored already are succeeded (their event may have been trimmed
        from the stream while the backend was down), undecided ones that are not are failed, terminal ones
        are forgotten."""
        with self.lock:
            flights = {job_id: set(f.held.open) for job_id, f in self.jobs.items()}
            undecided = {job_id: dict(f.undecided) for job_id, f in self.jobs.items() if f.undecided}
        for job_id, open_ in flights.items():
            try:
                job = self._read_manifest(job_id)
                stored = set(self.storage.list_files(job_prefix(job_id))) if job else set()
            except (StorageError, ValueError):
                continue
            with self.lock:
                for index in open_:
                    if job is None or job.images[index].status.is_terminal():
                        self._close(job_id, index, None)
                    elif job.images[index].key in stored:
                        self._close(job_id, index, ev.ImageSucceeded(job_id, index))
                    elif index in undecided.get(job_id, {}):
                        self._close(job_id, index, ev.ImageFailed(job_id, index, undecided[job_id][index]))
                cutoff = time.monotonic() - 3600
                self.removed_on_cancel = {k: t for k, t in self.removed_on_cancel.items() if t > cutoff}
            self.deliver()
