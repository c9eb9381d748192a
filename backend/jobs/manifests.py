"""Job manifests in storage: the single source of truth that survives restarts and switched-off boxes.

`ManifestStore` is the one writer of manifests. A change is applied in memory under a lock that is
never held across I/O, and a writer thread persists the latest state of each changed manifest
(several quick changes become one write). During a storage outage the writer keeps the changes and
retries with backoff, so no caller ever waits on S3 to record an event. The writer also notices when
storage answers again, which is what /health reports without calling storage itself.
"""

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from backend.contract import (
    INDEX_BUILT,
    INDEX_JOBS,
    INDEX_UNFINISHED,
    is_job_id,
    job_id_of_index_key,
    manifest_key,
    newest_first_key,
    training_key,
    unfinished_key,
)
from backend.models import JobManifest, TrainingManifest
from backend.storage import ObjectMissing, Storage, StorageError

log = logging.getLogger("showroom.manifests")
PING_S = 5.0          # while idle, how often the writer checks that storage answers
DOWN_PING_S = 0.5     # ... and, on top of the backoff below, while it does not
RETRY_S = (0.5, 1, 2, 4)  # backoff between failed writes; then every 4 s until storage answers
DELETED_KEPT = 10_000     # deleted ids remembered (about 1 MB): late work for one of them cleans up after itself


@dataclass(frozen=True)
class Kind:
    """What a store keeps: the document's model, its key and folder, and when it may leave memory."""
    model: type
    key: Callable[[str], str]
    folder: str
    settled: Callable[[object], bool]
    indexed: bool = False  # newest-first and unfinished markers under index/ (jobs)


def _job_settled(job: JobManifest) -> bool:
    """Nothing will change this job soon: it may leave memory once written."""
    return job.status.is_terminal() and not any(
        img.upscale and not img.upscale.status.is_terminal() for img in job.images)


JOBS = Kind(JobManifest, manifest_key, "jobs/", _job_settled, indexed=True)
TRAININGS = Kind(TrainingManifest, training_key, "trainings/", lambda training: training.status.is_terminal())


class ManifestStore:
    def __init__(self, storage: Storage, on_change: Callable[[JobManifest, JobManifest | None], None] | None = None,
                 kind: Kind = JOBS):
        self.storage, self.kind = storage, kind
        # Every call here is a small document someone waits on, or the writer, which retries on its own:
        # a hung store must fail them in seconds (and show as an outage), not after minutes of retries.
        self.quick = storage.responsive()
        self.on_change = on_change  # (after, before): called outside the lock after every update
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._live: dict[str, JobManifest] = {}   # jobs being changed: the newest state, ahead of storage
        self._version: dict[str, int] = {}
        self._dirty: dict[str, int] = {}          # job id -> the version storage does not have yet
        # settled jobs that came open again (an upscale of a finished job's image) -> the version that opened
        # them: their unfinished marker, removed when they settled, is written again before that version
        self._reopened: dict[str, int] = {}
        self._deleted: OrderedDict[str, None] = OrderedDict()  # the newest DELETED_KEPT ids deleted by this run
        self._job_locks = [threading.Lock() for _ in range(64)]
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.storage_ok, self.storage_error = True, ""
        self.owner = ""  # this backend's lease owner id, written into the unfinished markers of its jobs
        self._probed_at = 0.0

    # ----- lifecycle -----
    def start(self) -> "ManifestStore":
        self._thread = threading.Thread(target=self._write_loop, name="manifest-writer", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout: float = 10) -> None:
        """Write what is left (for at most `timeout` seconds), then stop the writer."""
        self.flush(timeout)
        self._stopping.set()
        with self._wake:
            self._wake.notify_all()
        if self._thread:
            self._thread.join(timeout)

    # ----- reading -----
    def load(self, job_id: str) -> JobManifest:
        """The manifest as storage has it (ObjectMissing when there is none)."""
        if not is_job_id(job_id):
            raise ObjectMissing(job_id)
        return self.kind.model.model_validate_json(self.quick.get(self.kind.key(job_id)))

    def get(self, job_id: str) -> JobManifest:
        """The newest state: the one in memory while the job is being changed, else storage's."""
        with self._lock:
            if job_id in self._deleted:  # gone, though a sweep may not have reached its manifest yet
                raise ObjectMissing(job_id)
            live = self._live.get(job_id)
            if live is not None:
                return live.model_copy(deep=True)
        return self.load(job_id)

    def ids(self, newest_first: bool = True) -> list[str]:
        ids = [i for i in self.quick.list_dirs(self.kind.folder) if is_job_id(i)]
        return sorted(ids, reverse=newest_first)

    def recent(self, limit: int, before: str | None = None) -> list[JobManifest]:
        """The newest jobs (older than `before`), newest first: one page of the index where it is built."""
        if self.kind.indexed and self.quick.exists(INDEX_BUILT):
            return self._recent_indexed(limit, before)
        found = []
        for job_id in self.ids():
            if len(found) >= limit:
                break
            if before is not None and job_id >= before:
                continue
            try:
                found.append(self.get(job_id))
            except (ObjectMissing, ValueError):
                continue  # a job folder whose manifest is not written yet, or unreadable
        return found

    def _recent_indexed(self, limit: int, before: str | None) -> list[JobManifest]:
        found, after = [], newest_first_key(before) if before else None
        while len(found) < limit:
            keys = self.quick.list_page(INDEX_JOBS, limit - len(found), after)
            if not keys:
                break
            for key in keys:
                try:
                    found.append(self.get(job_id_of_index_key(key)))
                except (ObjectMissing, ValueError):
                    continue  # deleted, or not written yet
            after = keys[-1]
        return found

    def unfinished_ids(self) -> list[str]:
        """Every job not yet terminal, however many came after it (the index's markers), oldest first."""
        self.build_index()
        ids = (key.rsplit("/", 1)[-1] for key in self.quick.list_files(INDEX_UNFINISHED))
        return sorted(i for i in ids if is_job_id(i))  # a stray key there must not stop recovery

    def build_index(self) -> bool:
        """Once per bucket: index the jobs written before the index existed. True if it was built now."""
        if not self.kind.indexed or self.quick.exists(INDEX_BUILT):
            return False
        count = 0
        for job_id in self.ids():
            try:
                job = self.load(job_id)
            except (ObjectMissing, ValueError):
                continue
            self._index(job)
            count += 1
        self.quick.put(INDEX_BUILT, b"", "text/plain")
        log.info("indexed %d jobs written before the index existed", count)
        return True

    def _index(self, job) -> None:
        self.quick.put(newest_first_key(job.id), b"", "text/plain")
        if not self.kind.settled(job):  # the marker names the backend that runs the job (backend.jobs.leases)
            self.quick.put(unfinished_key(job.id), self.owner.encode(), "text/plain")

    def unindex(self, job_id: str) -> None:
        for key in (newest_first_key(job_id), unfinished_key(job_id)):
            self.quick.delete(key)

    def storage_answers(self) -> bool:
        """Whether storage answers now: the writer's last word when it was good, else one short probe (at
        most one a second, a few seconds when storage hangs), so a single failed write refuses nothing."""
        if self.storage_ok:
            return True
        with self._lock:
            if time.monotonic() - self._probed_at < 1.0:
                return self.storage_ok
            self._probed_at = time.monotonic()
        try:
            self.quick.ping()
        except StorageError as e:
            self._storage_state(False, str(e))
            return False
        self._storage_state(True)
        return True

    def unsaved(self) -> int:
        """Manifests whose newest state storage does not have while it is failing."""
        with self._lock:
            return 0 if self.storage_ok else len(self._dirty)

    # ----- writing -----
    def create(self, job: JobManifest) -> bool:
        """Write a new job's manifest now (the caller answers only once it is stored). False on failure.
        Its index entries go first: a job that exists is always in the index and, until it ends, marked
        unfinished for recovery (an entry whose manifest never came is skipped)."""
        try:
            if self.kind.indexed:
                self._index(job)
            self.quick.put(self.kind.key(job.id), job.model_dump_json(indent=1).encode(), "application/json")
        except StorageError as e:
            log.warning("manifest of new job %s not saved: %s", job.id, e)
            self._storage_state(False, str(e))
            return False
        self._storage_state(True)
        with self._lock:
            self._live.setdefault(job.id, job.model_copy(deep=True))
        return True

    def update(self, job_id: str, change: Callable[[JobManifest], None]) -> JobManifest:
        """Apply `change` to the newest state of a job, derive its status and queue the write; returns
        a copy. Storage is read only when the job is not in memory, and never under the lock."""
        while True:
            with self._lock:
                known = job_id in self._live
            loaded = None if known else self.load(job_id)
            with self._lock:
                if job_id in self._deleted:  # a late event or click must not bring a deleted job back
                    raise ObjectMissing(job_id)
                job = self._live.get(job_id)
                if job is None:
                    if loaded is None:
                        continue  # it was written and left memory between our two looks: read it again
                    job = self._live[job_id] = loaded
                before = job.model_copy(deep=True) if self.on_change else None
                was_settled = self.kind.indexed and self.kind.settled(job)
                change(job)
                job.refresh()
                self._version[job_id] = self._version.get(job_id, 0) + 1
                self._dirty[job_id] = self._version[job_id]
                if was_settled and not self.kind.settled(job):  # recovery must find it again after a crash
                    self._reopened.setdefault(job_id, self._version[job_id])
                after = job.model_copy(deep=True)
                self._wake.notify_all()
                break
        if self.on_change:
            self.on_change(after, before)
        return after

    def job_lock(self, job_id: str) -> threading.Lock:
        """A lock per job (striped) for callers that must do two things to one job at once, such as
        recovery's "take back, then hand to the executor" against a cancel. Never held across I/O."""
        return self._job_locks[hash(job_id) % len(self._job_locks)]

    def flush(self, timeout: float = 10) -> bool:
        """Wait until storage has every change (True), or `timeout` passes (False)."""
        deadline = time.monotonic() + timeout
        with self._wake:
            while self._dirty:
                left = deadline - time.monotonic()
                if left <= 0 or self._thread is None or not self._thread.is_alive():
                    return not self._dirty
                self._wake.wait(min(left, 0.1))
        return True

    def forget(self, job_id: str) -> None:
        """Drop a job from memory (it was deleted)."""
        with self._lock:
            self._live.pop(job_id, None)
            self._dirty.pop(job_id, None)
            self._version.pop(job_id, None)
            self._reopened.pop(job_id, None)
            self._deleted[job_id] = None
            while len(self._deleted) > DELETED_KEPT:
                self._deleted.popitem(last=False)

    def was_deleted(self, job_id: str) -> bool:
        """Whether this run deleted the job: work still under way for it (an upscale, a cut-out) removes
        what it writes instead of leaving it under a job that is gone."""
        with self._lock:
            return job_id in self._deleted

    # ----- the writer thread -----
    def _write_loop(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            with self._wake:
                if not self._dirty:  # while storage fails, look again soon: submits are refused until it answers
                    self._wake.wait(PING_S if self.storage_ok else DOWN_PING_S)
                if not self._dirty:
                    item = None
                else:
                    job_id = next(iter(self._dirty))
                    item = (job_id, self._version[job_id], self._live[job_id].model_dump_json(indent=1),
                            job_id in self._reopened)
            try:
                if item is None:
                    self.quick.ping()
                else:
                    if item[3]:  # the marker first, as at create: a job open in storage always has one
                        self.quick.put(unfinished_key(item[0]), self.owner.encode(), "text/plain")
                    self.quick.put(self.kind.key(item[0]), item[2].encode(), "application/json")
            except StorageError as e:
                failures += 1
                if failures == 1 or failures % 20 == 0:
                    log.warning("storage failed (%s); %d manifests wait to be written", e, len(self._dirty))
                self._storage_state(False, str(e))
                self._stopping.wait(RETRY_S[min(failures - 1, len(RETRY_S) - 1)])
                continue
            except Exception:
                log.exception("writing manifests failed; carrying on")
                self._stopping.wait(1)
                continue
            failures = 0
            self._storage_state(True)
            if item is not None and self._written(*item[:2]) and self.kind.indexed:
                self._finished(item[0])

    def _written(self, job_id: str, version: int) -> bool:
        """True when the job just written is settled (and left memory)."""
        settled = False
        with self._wake:
            if self._reopened.get(job_id, version + 1) <= version:
                del self._reopened[job_id]  # its marker was written with this version
            if self._dirty.get(job_id) == version:
                del self._dirty[job_id]
                job = self._live[job_id]
                if self.kind.settled(job):
                    self._live.pop(job_id)
                    self._version.pop(job_id)
                    settled = True
            self._wake.notify_all()
        return settled

    def _finished(self, job_id: str) -> None:
        try:
            self.quick.delete(unfinished_key(job_id))
        except StorageError as e:  # left: recovery finds the job terminal and removes the marker then
            log.warning("job %s: unfinished marker not removed: %s", job_id, e)

    def _storage_state(self, ok: bool, error: str = "") -> None:
        if ok and not self.storage_ok:
            log.info("storage answers again")
        self.storage_ok, self.storage_error = ok, error
