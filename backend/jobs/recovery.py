"""At start-up, take back the jobs a previous run left unfinished, so no manifest stays open forever.

If storage cannot be read at start-up, the scan is tried again in the background until it can:
a box that boots while S3 is down still finishes what its previous run left. Only jobs whose backend
is gone are taken (backend.jobs.leases): a second backend on the same bucket leaves the first one's
running jobs alone, and takes them over if that backend goes away later.
"""

import logging
import threading
import time

from backend.contract import created_us, job_prefix, unfinished_key
from backend.errors import ShowroomError
from backend.jobs.leases import Leases
from backend.models import Status
from backend.storage import ObjectMissing, StorageError

log = logging.getLogger("showroom.recovery")
RETRY_DELAYS_S = (1, 2, 4, 8, 10)  # then every 10 s


def _pending_upscales(job) -> bool:
    return any(img.upscale and not img.upscale.status.is_terminal() for img in job.images)


def recover(store, executor, jobs, upscales=None, booted_us: int | None = None, leases=None,
            taken_ids: set[str] | None = None) -> int | None:
    """Queue again what was `queued` or `running`; fail images whose LoRA is gone; restart upscales
    left unfinished. Jobs made by this run (created at or after `booted_us`), jobs this run took back
    before (`taken_ids`, which it adds to), jobs the executor already holds and jobs a live backend owns
    (`leases`) are left alone, so a scan may be repeated. Returns the number of jobs taken back, or None
    when storage could not be read and the scan must be tried again."""
    taken, taken_ids = 0, taken_ids if taken_ids is not None else set()
    try:
        ids = store.unfinished_ids()  # the index's markers: every unfinished job, however old
    except StorageError as e:
        log.warning("could not scan for unfinished jobs: %s", e)
        return None
    for job_id in ids:
        if (booted_us is not None and created_us(job_id) >= booted_us) or job_id in taken_ids:
            continue
        try:
            if leases is not None and not leases.claim(job_id):
                continue
            if _take_back(store, executor, jobs, upscales, job_id):
                taken += 1
                taken_ids.add(job_id)
        except StorageError as e:
            log.warning("storage failed while taking back job %s: %s", job_id, e)
            return None
    return taken


def _take_back(store, executor, jobs, upscales, job_id: str) -> int:
    """One job: 1 if it was queued again, else 0. Storage errors propagate: the scan is retried."""
    if executor.holds(job_id):
        return 0
    try:
        job = store.get(job_id)
    except ObjectMissing:
        return 0  # a job folder without a manifest: nothing was promised
    except ValueError as e:
        log.error("job %s has an unreadable manifest, left as it is: %s", job_id, e)
        return 0
    if job.status.is_terminal() and not _pending_upscales(job):
        store.storage.delete(unfinished_key(job_id))  # its run stopped between the last write and this
        return 0
    stored = set(store.storage.list_files(job_prefix(job_id))) if not job.status.is_terminal() else set()
    reason = None
    loras = ()
    if not job.status.is_terminal():
        try:
            loras = jobs.loras_for(job.spec)
        except (ShowroomError, ValueError) as e:
            reason = f"the backend restarted and {getattr(e, 'detail', None) or e}"

    def take(job) -> None:
        for img in job.images:
            if img.status == Status.running:  # stored before the crash, unreported: made already
                img.succeeded() if img.key in stored else img.requeued()
            if reason is not None and not img.status.is_terminal():
                img.failed(reason)
        if upscales is None:
            for img in job.images:
                if img.upscale and not img.upscale.status.is_terminal():
                    img.upscale.status, img.upscale.error = Status.failed, "the upscaler is off (UPSCALER=off)"

    taken = 0
    # Under the job's lock: a cancel lands either before (and is seen here) or after the executor holds it.
    with store.job_lock(job_id):
        if executor.holds(job_id):
            return 0
        job = store.update(job_id, take)
        if not job.status.is_terminal():
            if job.layout_key:
                jobs.enqueue(job, loras)  # a place job: laid out first if its run stopped before that
            else:
                executor.submit(job, loras)
            taken = 1
            log.info("job %s taken back after a restart (%d images to go)", job_id,
                     sum(not i.status.is_terminal() for i in job.images))
    if upscales is not None and _pending_upscales(job):
        upscales.resume(job)  # after the submit: the upscale's record lives on the job the store holds
    return taken


class Recovery:
    """Runs `recover` once at start-up and, while storage cannot be read, again in the background; then
    watches the other backends on the bucket and takes over the jobs of any that goes away."""

    def __init__(self, store, scheduler, jobs, upscales=None, delays_s=RETRY_DELAYS_S, trainings=None,
                 leases: Leases | None = None):
        self.args = (store, scheduler, jobs, upscales)
        self.trainings = trainings
        self.leases = leases or Leases(store.storage)
        store.owner = self.leases.me  # new jobs' markers name this backend
        if trainings is not None:
            trainings.owner = self.leases.me  # and so do new trainings'
        self.taken_ids: set[str] = set()
        self.booted_us = time.time_ns() // 1000
        self.delays_s = delays_s
        self.done = threading.Event()
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> "Recovery":
        self.leases.start()
        recovered = False
        try:
            recovered = self._attempt()
        except Exception:  # start-up must not fail over an earlier run's leftovers: try again in the background
            log.exception("taking back unfinished jobs failed; trying again")
        if not recovered:
            log.warning("unfinished jobs of an earlier run will be taken back once storage answers")
        self.thread = threading.Thread(target=self._run, args=(recovered,), name="recovery", daemon=True)
        self.thread.start()
        return self

    def close(self) -> None:
        self.stopping.set()
        if self.thread:
            self.thread.join(timeout=5)
        self.leases.close()

    def _recover(self) -> int | None:
        return recover(*self.args, booted_us=self.booted_us, leases=self.leases, taken_ids=self.taken_ids)

    def _attempt(self) -> bool:
        taken = self._recover()
        if taken is None:
            return False
        if self.trainings is not None:
            try:
                self.trainings.resume_unfinished(self.booted_us, self.leases)
            except StorageError as e:
                log.warning("could not scan for unfinished trainings: %s", e)
                return False
        self.done.set()
        return True

    def _run(self, recovered: bool) -> None:
        if recovered or self._retry():
            self._watch()

    def _retry(self) -> bool:
        attempt = 0
        while not self.stopping.wait(self.delays_s[min(attempt, len(self.delays_s) - 1)]):
            attempt += 1
            try:
                if self._attempt():
                    log.info("storage answers again: unfinished jobs of the earlier run taken back")
                    return True
            except Exception:  # the thread must outlive any surprise; the next attempt starts afresh
                log.exception("taking back unfinished jobs failed; trying again")
        return False

    def _watch(self) -> None:
        """Every RENEW_S: one LIST of the heartbeats; when a backend went away, a scan takes its jobs."""
        pending: set[str] = set()  # gone backends whose work is not all taken yet: a failed pass is redone
        while not self.stopping.wait(self.leases.renew_s):
            try:
                gone = self.leases.gone()
                if gone:
                    log.info("backend(s) gone from the bucket: %s; taking over their unfinished jobs",
                             ", ".join(sorted(gone)))
                pending |= gone
                if pending and self._recover() is not None:
                    if self.trainings is not None:
                        self.trainings.resume_unfinished(self.booted_us, self.leases)
                    self.leases.forget(pending)
                    pending = set()
            except StorageError as e:
                log.warning("could not look for backends that went away: %s", e)
            except Exception:
                log.exception("looking for backends that went away failed; carrying on")
