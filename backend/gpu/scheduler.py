"""Fans the images of jobs out over the local worker processes, one per GPU.

The executor interface is `submit(job, loras)`, `cancel(job_id)`, `snapshot()`, `start()`, `stop()`:
a scheduler spanning several GPU boxes can take its place later.

One dispatcher thread owns the workers: it hands out batches, reads the workers' messages,
notices a worker that died or overran its time limit, and applies every change to the job
manifests (the only writer of manifests after submission). Each change is persisted at once.
"""

import logging
import math
import multiprocessing as mp
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from multiprocessing.connection import wait

from backend.gpu import messages as m
from backend.gpu.worker import DEVICE_BROKEN_EXIT
from backend.jobs.manifests import JobStore
from backend.models import JobManifest, Status, now
from backend.storage import StorageError

log = logging.getLogger("showroom.scheduler")
MAX_ATTEMPTS = 2          # an image whose worker died is tried once more on another worker
MAX_RESTARTS = 3          # consecutive failed starts before a worker slot is given up
TICK_S = 0.25


class WorkerState(str, Enum):
    starting = "starting"
    ready = "ready"
    busy = "busy"
    dead = "dead"


@dataclass
class Work:
    job_id: str
    index: int
    attempts: int = 0


@dataclass
class WorkerSlot:
    id: int
    state: WorkerState = WorkerState.starting
    device: str = ""
    process: mp.Process | None = None
    conn: object = None
    cancel_task: object = None
    task: m.Task | None = None
    work: list[Work] = field(default_factory=list)
    deadline: float = 0.0
    kill_reason: str | None = None
    error: str | None = None
    failed_starts: int = 0
    restart_at: float = 0.0
    progress: tuple[int, int] = (0, 0)


class Scheduler:
    def __init__(self, settings, store: JobStore, worker_count: int, on_event: Callable[[str, dict], None] | None = None,
                 worker_target: Callable | None = None):
        self.settings, self.store = settings, store
        self.worker_target = worker_target
        self.on_event = on_event or (lambda kind, info: None)
        self.ctx = mp.get_context("spawn")
        self.lock = threading.RLock()
        self.jobs: dict[str, JobManifest] = {}        # jobs not yet terminal
        self.loras: dict[str, tuple] = {}
        self.pending: deque[Work] = deque()
        self.slots = [WorkerSlot(i) for i in range(worker_count)]
        self.native_size: int | None = None
        self._next_task = 0
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)

    # ----- the executor interface -----
    def start(self) -> None:
        for slot in self.slots:
            self._spawn(slot)
        self._thread.start()

    def stop(self, timeout: float = 10) -> None:
        self._stopping.set()
        self._wake()
        self._thread.join(timeout)
        for slot in self.slots:
            self._shutdown(slot, timeout)

    def submit(self, job: JobManifest, loras: tuple) -> None:
        with self.lock:
            self.jobs[job.id] = job
            self.loras[job.id] = loras
            for img in job.images:
                if img.status == Status.queued:
                    self.pending.append(Work(job.id, img.index))
        self._wake()

    def cancel(self, job_id: str) -> JobManifest | None:
        """Cancel what is queued at once and interrupt what is running; None if the job is not active."""
        with self.lock:
            job = self.jobs.get(job_id)
            if job is None:
                return None
            job.canceled_requested = True
            waiting = {w.index for w in self.pending if w.job_id == job_id}
            self.pending = deque(w for w in self.pending if w.job_id != job_id)
            for img in job.images:
                if img.index in waiting:
                    img.canceled()
            for slot in self.slots:
                if slot.task and slot.task.job_id == job_id:
                    slot.cancel_task.value = slot.task.task_id
            self._changed(job)
            return job.model_copy(deep=True)

    def mutate(self, job_id: str, change: Callable[[JobManifest], None]) -> JobManifest:
        """Apply a change to a job's manifest and persist it; the one writer for active and finished jobs
        alike, so an upscale recorded beside running images is never overwritten by them."""
        with self.lock:
            job = self.jobs.get(job_id) or self.store.load(job_id)
            change(job)
            job.updated_at = now()
            self.store.save(job)
            return job.model_copy(deep=True)

    def hopeless(self) -> bool:
        """True once no worker slot will ever start again (the model cannot be loaded)."""
        with self.lock:
            return all(s.failed_starts >= MAX_RESTARTS for s in self.slots)

    def last_error(self) -> str:
        with self.lock:
            return next((s.error for s in self.slots if s.error), "no worker could start")

    def pending_images(self) -> int:
        # No lock: the dispatcher holds it while it writes manifests to storage, and a submit must not
        # wait on S3. len() of a deque is atomic; two racing submits may pass the bound by one job.
        return len(self.pending)

    def active(self, job_id: str) -> JobManifest | None:
        with self.lock:
            job = self.jobs.get(job_id)
            return job.model_copy(deep=True) if job else None

    def snapshot(self) -> dict:
        with self.lock:
            return {
                "workers": [{"id": s.id, "device": s.device or "unknown", "state": s.state.value} for s in self.slots],
                "errors": [s.error for s in self.slots if s.error],
                "pending": len(self.pending),
                "native_size": self.native_size,
                "unsaved": len(self.store.unsaved),
            }

    # ----- worker processes -----
    def _spawn(self, slot: WorkerSlot) -> None:
        from backend.gpu.worker import run_worker

        target = self.worker_target or run_worker
        parent, child = self.ctx.Pipe()
        slot.cancel_task = self.ctx.Value("q", -1, lock=False)
        args = (slot.id, self.settings, child, slot.cancel_task, len(self.slots))
        slot.process = self.ctx.Process(target=target, args=args,
                                        name=f"showroom-worker-{slot.id}", daemon=True)
        slot.process.start()
        child.close()
        slot.conn, slot.state, slot.task, slot.work, slot.kill_reason = parent, WorkerState.starting, None, [], None
        log.info("worker %d starting (pid %s)", slot.id, slot.process.pid)

    def _shutdown(self, slot: WorkerSlot, timeout: float) -> None:
        if slot.process is None:
            return
        try:
            slot.conn.send(m.Stop())
        except (OSError, ValueError):
            pass
        slot.process.join(timeout)
        if slot.process.is_alive():
            slot.process.kill()
            slot.process.join(2)

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass  # the pipe is full: the loop is already due to wake

    # ----- the dispatcher thread -----
    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._tick()
            except Exception:
                log.exception("scheduler tick failed; carrying on")
                time.sleep(TICK_S)

    def _tick(self) -> None:
        with self.lock:
            self._dispatch()
            waitables = {self._wake_r: None}
            for slot in self.slots:
                if slot.process is not None:
                    waitables[slot.conn] = slot
                    waitables[slot.process.sentinel] = slot
        for ready in wait(list(waitables), timeout=TICK_S):
            if ready == self._wake_r:
                os.read(self._wake_r, 4096)
                continue
            slot = waitables[ready]
            with self.lock:
                if slot.process is None:
                    continue
                if ready is slot.conn:
                    self._receive(slot)
                elif not slot.process.is_alive():
                    self._drain(slot)
                    self._died(slot)
        with self.lock:
            self._check_deadlines()
            self._restart_due()
            self.store.flush()

    def _receive(self, slot: WorkerSlot) -> None:
        try:
            while slot.conn.poll():
                self._handle(slot, slot.conn.recv())
        except (EOFError, OSError):
            slot.process.join(5)
            self._died(slot)

    def _drain(self, slot: WorkerSlot) -> None:
        """Read what a dead worker sent before it died: its last images may have landed."""
        try:
            while slot.conn.poll():
                self._handle(slot, slot.conn.recv())
        except (EOFError, OSError):
            pass

    def _dispatch(self) -> None:
        idle = [s for s in self.slots if s.state == WorkerState.ready]
        while idle and self.pending:
            head = self.pending[0].job_id
            same_job = [w for w in self.pending if w.job_id == head]
            size = min(math.ceil(len(same_job) / len(idle)), self.settings.max_batch)
            batch = same_job[:size]
            self.pending = deque(w for w in self.pending if w not in batch)
            self._assign(idle.pop(0), batch)

    def _assign(self, slot: WorkerSlot, batch: list[Work]) -> None:
        job = self.jobs[batch[0].job_id]
        spec = job.spec
        self._next_task += 1
        images = [job.images[w.index] for w in batch]
        task = m.Task(
            task_id=self._next_task, job_id=job.id, indices=tuple(i.index for i in images),
            seeds=tuple(i.seed for i in images), keys=tuple(i.key for i in images),
            prompt=spec.prompt, negative_prompt=spec.negative_prompt, steps=spec.steps,
            guidance_scale=spec.guidance_scale, width=spec.width, height=spec.height, strength=spec.strength,
            input_key=job.input_key, loras=self.loras.get(job.id, ()),
            meta=spec.model_dump(mode="json", exclude={"seed", "num_images"}) | {"model": self.settings.model_id},
        )
        try:
            slot.conn.send(task)
        except (OSError, ValueError):
            self.pending.extendleft(reversed(batch))
            return  # the sentinel reports the death on the next tick
        slot.state, slot.task, slot.work, slot.progress = WorkerState.busy, task, batch, (0, spec.steps)
        slot.deadline = time.monotonic() + self.settings.image_timeout_s * len(batch)
        for w in batch:
            w.attempts += 1
        log.info("job %s images %s -> worker %d", job.id, list(task.indices), slot.id)

    def _handle(self, slot: WorkerSlot, msg) -> None:
        if isinstance(msg, m.Ready):
            slot.state, slot.device, slot.error, slot.failed_starts = WorkerState.ready, msg.device, None, 0
            self.native_size = msg.native_size
            self.on_event("worker_ready", {"worker": slot.id, "load_s": msg.load_s})
        elif isinstance(msg, m.LoadFailed):
            slot.error = msg.error
        elif isinstance(msg, m.Progress):
            slot.progress = (msg.step, msg.total)
        elif slot.task is None or getattr(msg, "task_id", None) != slot.task.task_id:
            log.warning("worker %d sent %r for a task it does not hold", slot.id, msg)
        elif isinstance(msg, m.Started):
            job = self.jobs.get(slot.task.job_id)
            if job:
                for index in slot.task.indices:
                    if not job.images[index].status.is_terminal():
                        job.images[index].started(slot.id)
                self._changed(job)
        elif isinstance(msg, m.ImageDone | m.ImageFailed):
            slot.work = [w for w in slot.work if w.index != msg.index]
            job = self.jobs.get(slot.task.job_id)
            if job:
                img = job.images[msg.index]
                img.succeeded() if isinstance(msg, m.ImageDone) else img.failed(msg.error)
                self.on_event("image", {"status": img.status.value})
                self._changed(job)
        elif isinstance(msg, m.Done):
            job = self.jobs.get(slot.task.job_id)
            if job and slot.work:  # what the worker did not report: interrupted by cancel, or lost
                for w in slot.work:
                    img = job.images[w.index]
                    if msg.canceled:
                        img.canceled()
                    elif not img.status.is_terminal():
                        img.failed("the worker finished without reporting this image")
                self._changed(job)
            self.on_event("task", {"seconds": msg.seconds, "images": len(slot.task.indices)})
            slot.state, slot.task, slot.work = WorkerState.ready, None, []

    def _died(self, slot: WorkerSlot) -> None:
        code = slot.process.exitcode
        reason = slot.kill_reason or (f"worker {slot.id} hit a device error and was restarted"
                                      if code == DEVICE_BROKEN_EXIT else f"worker {slot.id} died (exit code {code})")
        log.error("%s", reason if not slot.error else f"{reason}: {slot.error}")
        for w in slot.work:
            job = self.jobs.get(w.job_id)
            if job is None or job.images[w.index].status.is_terminal():
                continue
            img = job.images[w.index]
            if self._already_stored(img.key):
                img.succeeded()  # it died between its upload and its report: the image is made
            elif job.canceled_requested:
                img.canceled()
            elif slot.kill_reason is None and w.attempts < MAX_ATTEMPTS:
                img.requeued()
                self.pending.appendleft(w)
            else:
                img.failed(reason if w.attempts < MAX_ATTEMPTS else f"{reason}; it was the second try")
            self._changed(job)
        was_ready = slot.state != WorkerState.starting
        slot.process, slot.task, slot.work, slot.state = None, None, [], WorkerState.dead
        slot.failed_starts = 0 if was_ready else slot.failed_starts + 1
        slot.restart_at = time.monotonic() + min(30.0, 2.0 ** slot.failed_starts - 1)
        if slot.failed_starts >= MAX_RESTARTS:
            log.error("worker %d failed to start %d times; giving up on it", slot.id, slot.failed_starts)
        self._fail_if_hopeless()

    def _already_stored(self, key: str) -> bool:
        if self.store.clock() < self.store.down_until:
            return False  # storage just failed: do not hold the lock (and every request) on its retries
        try:
            return self.store.storage.exists(key)
        except StorageError:
            return False  # unknown: try again or fail, as if it were not there

    def _restart_due(self) -> None:
        for slot in self.slots:
            if (slot.state == WorkerState.dead and slot.process is None and slot.failed_starts < MAX_RESTARTS
                    and time.monotonic() >= slot.restart_at and not self._stopping.is_set()):
                self._spawn(slot)

    def _fail_if_hopeless(self) -> None:
        """With no worker left that could ever start, fail what waits rather than keep it forever."""
        if any(s.failed_starts < MAX_RESTARTS for s in self.slots):
            return
        error = next((s.error for s in self.slots if s.error), "no worker could start")
        while self.pending:
            w = self.pending.popleft()
            job = self.jobs[w.job_id]
            job.images[w.index].failed(error)
            self._changed(job)

    def _check_deadlines(self) -> None:
        for slot in self.slots:
            if slot.task and slot.kill_reason is None and time.monotonic() > slot.deadline:
                limit = self.settings.image_timeout_s * len(slot.work or [None])
                slot.kill_reason = f"timed out after {limit:.0f} s (IMAGE_TIMEOUT_S={self.settings.image_timeout_s:g})"
                log.error("worker %d: %s; killing it", slot.id, slot.kill_reason)
                slot.process.kill()

    def _changed(self, job: JobManifest) -> None:
        job.refresh()
        self.store.save(job)
        if job.status.is_terminal():
            self.jobs.pop(job.id, None)
            self.loras.pop(job.id, None)
            self.on_event("job", {"status": job.status.value})
            log.info("job %s %s", job.id, job.status.value)
