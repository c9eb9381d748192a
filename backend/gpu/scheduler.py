"""The local executor: fans the images of jobs out over this box's worker processes, one per GPU.

One dispatcher thread owns the workers: it hands out batches (and local upscales), reads the
workers' messages, notices a worker that died or overran its time limit, and reports what happened
as events (backend.gpu.executor). It writes no manifest. Its lock guards memory only: no storage
call is ever made while it is held, so /health and the routes never wait on S3 behind it.
"""

import logging
import math
import multiprocessing as mp
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from enum import Enum
from multiprocessing.connection import wait
from pathlib import Path

from backend.contract import preview_key
from backend.gpu import executor as ev
from backend.gpu import messages as m
from backend.gpu.worker import DEVICE_BROKEN_EXIT
from backend.models import JobManifest, Status
from backend.storage import Storage, StorageError

log = logging.getLogger("showroom.scheduler")
MAX_ATTEMPTS = 2          # an image whose worker died is tried once more on another worker
MAX_RESTARTS = 3          # consecutive failed starts before a worker slot is given up
MAX_TRAINING_ATTEMPTS = 3  # a training resumes from its checkpoint after a lost worker, twice
TICK_S = 0.25
DECIDE_EVERY_S = 2.0      # how often images whose fate waits on storage are looked at again


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
    cost: float = 1.0  # in 512 x 512, 30-step images


@dataclass
class Upscale:
    source_key: str
    target_key: str
    future: Future


@dataclass
class Training:
    task: m.TrainTask
    attempts: int = 0


@dataclass
class HeldJob:
    job: JobManifest          # a private copy, read only: spec, keys, seeds (the manifest store owns the live one)
    loras: tuple
    open: set[int]            # images not yet reported terminal
    canceled: bool = False


@dataclass
class WorkerSlot:
    id: int
    state: WorkerState = WorkerState.starting
    device: str = ""
    process: mp.Process | None = None
    conn: object = None
    cancel_task: object = None
    task: m.Task | m.UpscaleTask | None = None
    work: list[Work] = field(default_factory=list)
    upscale: Upscale | None = None
    training: Training | None = None
    deadline: float = 0.0
    kill_reason: str | None = None
    error: str | None = None
    failed_starts: int = 0
    restart_at: float = 0.0


@dataclass
class Lost:
    """What a dead worker held, settled after the lock is released (it may ask storage)."""
    work: list[Work]
    upscale: Upscale | None
    training: Training | None
    reason: str
    killed: bool


class Scheduler:
    def __init__(self, settings, storage: Storage, worker_count: int, on_event: ev.EventSink | None = None,
                 worker_target: Callable | None = None):
        self.settings, self.storage = settings, storage
        self.worker_target = worker_target
        self.on_event = on_event or (lambda event: None)
        self.ctx = mp.get_context("spawn")
        self.lock = threading.RLock()
        self.jobs: dict[str, HeldJob] = {}
        self.pending: deque[Work] = deque()
        self.upscales: deque[Upscale] = deque()
        self.trainings: deque[Training] = deque()
        self.slots = [WorkerSlot(i) for i in range(worker_count)]
        self.native_size: int | None = None
        self._outbox: list[ev.Event] = []
        self.undecided: list[tuple[Work, str]] = []  # lost images storage could not tell about (with the reason)
        self._decide_at = 0.0
        self._delivering = threading.Lock()
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
        with self.lock:
            for upscale in self.upscales:
                upscale.future.set_exception(RuntimeError("the backend is stopping"))
            self.upscales.clear()

    def submit(self, job: JobManifest, loras: tuple) -> None:
        with self.lock:
            queued = [img.index for img in job.images if img.status == Status.queued]
            self.jobs[job.id] = HeldJob(job.model_copy(deep=True), loras, set(queued))
            self.pending.extend(Work(job.id, index, cost=job.spec.image_cost) for index in queued)
            if not queued:
                del self.jobs[job.id]
        self._wake()

    def cancel(self, job_id: str) -> bool:
        """Cancel what is queued at once and interrupt what is running."""
        with self.lock:
            held = self.jobs.get(job_id)
            if held is None:
                return False
            held.canceled = True
            waiting = tuple(w.index for w in self.pending if w.job_id == job_id)
            self.pending = deque(w for w in self.pending if w.job_id != job_id)
            if waiting:
                self._close(job_id, waiting, ev.ImagesCanceled(job_id, waiting))
            for slot in self.slots:
                if isinstance(slot.task, m.Task) and slot.task.job_id == job_id:
                    slot.cancel_task.value = slot.task.task_id
        self._deliver()
        return True

    def holds(self, job_id: str) -> bool:
        with self.lock:
            return job_id in self.jobs

    def upscale(self, source_key: str, target_key: str) -> Future:
        """Run the local upscaler on a worker's GPU; the future ends when the result is stored."""
        future: Future = Future()
        with self.lock:
            if self._stopping.is_set():
                raise RuntimeError("the backend is stopping")
            self.upscales.append(Upscale(source_key, target_key, future))
        self._wake()
        return future

    def train(self, task: m.TrainTask) -> None:
        with self.lock:
            self.trainings.append(Training(task))
        self._wake()

    def hopeless(self) -> bool:
        """True once no worker slot will ever start again (the model cannot be loaded)."""
        with self.lock:
            return all(s.failed_starts >= MAX_RESTARTS for s in self.slots)

    def last_error(self) -> str:
        with self.lock:
            return next((s.error for s in self.slots if s.error), "no worker could start")

    def pending_images(self) -> int:
        return len(self.pending)  # len() of a deque is atomic: a submit never waits for the lock

    def pending_cost(self) -> float:
        return sum(w.cost for w in list(self.pending))  # list() copies the deque in one step under the GIL

    def snapshot(self) -> dict:
        with self.lock:
            return {
                "workers": [{"id": s.id, "device": s.device or "unknown", "state": s.state.value} for s in self.slots],
                "errors": [s.error for s in self.slots if s.error],
                "pending": len(self.pending),
                "native_size": self.native_size,
            }

    # ----- worker processes -----
    def _spawn(self, slot: WorkerSlot) -> None:
        from backend.gpu.worker import run_worker

        target = self.worker_target or run_worker
        parent, child = self.ctx.Pipe()
        slot.cancel_task = self.ctx.Value("q", -1, lock=False)
        args = (slot.id, self.settings, child, slot.cancel_task, len(self.slots))
        slot.process = self.ctx.Process(target=target, args=args, name=f"showroom-worker-{slot.id}", daemon=True)
        slot.process.start()
        child.close()
        slot.conn, slot.state, slot.task, slot.work, slot.upscale = parent, WorkerState.starting, None, [], None
        slot.kill_reason = None
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

    def _emit(self, event: ev.Event) -> None:
        self._outbox.append(event)  # under the lock; delivered once it is released

    def _deliver(self) -> None:
        """Hand the events out in order, outside the lock (the sink may take its own locks)."""
        with self._delivering:
            with self.lock:
                events, self._outbox = self._outbox, []
            for event in events:
                try:
                    self.on_event(event)
                except Exception:
                    log.exception("an event could not be applied: %r", event)

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
        self._deliver()
        lost: list[Lost] = []
        for ready in wait(list(waitables), timeout=TICK_S):
            if ready == self._wake_r:
                os.read(self._wake_r, 4096)
                continue
            slot = waitables[ready]
            with self.lock:
                if slot.process is None:
                    continue
                if ready is slot.conn:
                    lost += self._receive(slot)
                elif not slot.process.is_alive():
                    self._drain(slot)
                    lost.append(self._died(slot))
        for item in lost:
            self._settle(item)
        self._decide_undecided()
        with self.lock:
            self._check_deadlines()
            self._restart_due()
        self._deliver()

    def _receive(self, slot: WorkerSlot) -> list[Lost]:
        try:
            while slot.conn.poll():
                self._handle(slot, slot.conn.recv())
        except (EOFError, OSError):
            slot.process.join(5)
            return [self._died(slot)]
        return []

    def _drain(self, slot: WorkerSlot) -> None:
        """Read what a dead worker sent before it died: its last images may have landed."""
        try:
            while slot.conn.poll():
                self._handle(slot, slot.conn.recv())
        except (EOFError, OSError):
            pass

    def _dispatch(self) -> None:
        idle = [s for s in self.slots if s.state == WorkerState.ready]
        while idle and self.upscales:  # an upscale is one short image a person is waiting for: first
            self._assign_upscale(idle.pop(0), self.upscales.popleft())
        while idle and self.pending:
            head = self.pending[0].job_id
            same_job = [w for w in self.pending if w.job_id == head]
            size = batch_size(len(same_job), len(idle), self.settings.max_batch)
            batch = same_job[:size]
            self.pending = deque(w for w in self.pending if w not in batch)
            self._assign(idle.pop(0), batch)
        # Trainings go last and one at a time: the other GPUs keep generating while one learns a product.
        if idle and self.trainings and not any(isinstance(s.task, m.TrainTask) for s in self.slots):
            self._assign_training(idle.pop(0), self.trainings.popleft())

    def _assign_training(self, slot: WorkerSlot, training: Training) -> None:
        self._next_task += 1
        task = replace(training.task, task_id=self._next_task)
        try:
            slot.conn.send(task)
        except (OSError, ValueError):
            self.trainings.appendleft(training)
            return
        training.attempts += 1
        slot.state, slot.task, slot.training = WorkerState.busy, task, training
        slot.deadline = time.monotonic() + getattr(self.settings, "training_timeout_s", 3 * 3600)
        self._emit(ev.TrainingStarted(task.training_id, slot.id))
        log.info("training %s -> worker %d (attempt %d)", task.training_id, slot.id, training.attempts)

    def _assign(self, slot: WorkerSlot, batch: list[Work]) -> None:
        held = self.jobs[batch[0].job_id]
        self._next_task += 1
        task = build_task(self._next_task, held, [w.index for w in batch], self.settings.model_id)
        try:
            slot.conn.send(task)
        except (OSError, ValueError):
            self.pending.extendleft(reversed(batch))
            return  # the sentinel reports the death on the next tick
        slot.state, slot.task, slot.work = WorkerState.busy, task, batch
        slot.deadline = time.monotonic() + self.settings.image_timeout_s * len(batch)
        for w in batch:
            w.attempts += 1
        log.info("job %s images %s -> worker %d", task.job_id, list(task.indices), slot.id)

    def _assign_upscale(self, slot: WorkerSlot, upscale: Upscale) -> None:
        self._next_task += 1
        task = m.UpscaleTask(self._next_task, upscale.source_key, upscale.target_key)
        if not upscale.future.set_running_or_notify_cancel():
            return  # given up on by its caller before it started
        try:
            slot.conn.send(task)
        except (OSError, ValueError):
            upscale.future.set_exception(RuntimeError("the worker chosen for the upscale stopped; try again"))
            return
        slot.state, slot.task, slot.upscale = WorkerState.busy, task, upscale
        slot.deadline = time.monotonic() + self.settings.image_timeout_s
        log.info("upscale of %s -> worker %d", upscale.source_key, slot.id)

    def _handle(self, slot: WorkerSlot, msg: m.FromWorker) -> None:
        task = slot.task
        match msg:
            case m.Ready(device=device, native_size=native_size, load_s=load_s):
                slot.state, slot.device, slot.error, slot.failed_starts = WorkerState.ready, device, None, 0
                self.native_size = native_size
                self._emit(ev.WorkerReady(slot.id, load_s))
            case m.LoadFailed(error=error):
                slot.error = error
            case _ if task is None or msg.task_id != task.task_id:
                log.warning("worker %d sent %r for a task it does not hold", slot.id, msg)
            case m.Progress(step=step, total=total, loss=loss) if isinstance(task, m.TrainTask):
                self._emit(ev.TrainingProgress(task.training_id, step, total, loss))
            case m.Done(error=error, info=info) if isinstance(task, m.TrainTask):
                self._emit(ev.TrainingSucceeded(task.training_id, info) if error is None
                           else ev.TrainingFailed(task.training_id, error))
                slot.state, slot.task, slot.training = WorkerState.ready, None, None
            case m.Done(error=error) if isinstance(task, m.UpscaleTask):
                upscale, slot.upscale = slot.upscale, None
                if error is None:
                    upscale.future.set_result(None)
                else:
                    upscale.future.set_exception(RuntimeError(error))
                slot.state, slot.task = WorkerState.ready, None
            case m.Started() | m.Progress() | m.Preview():
                self._emit(ev.image_event(msg, task, slot.id))
            case m.ImageDone(index=index) | m.ImageFailed(index=index):
                slot.work = [w for w in slot.work if w.index != index]
                self._close(task.job_id, (index,), ev.image_event(msg, task, slot.id))
            case m.Done(canceled=canceled, seconds=seconds):
                for w in slot.work:  # what the worker did not report: interrupted by cancel, or lost
                    event = (ev.ImagesCanceled(w.job_id, (w.index,)) if canceled else
                             ev.ImageFailed(w.job_id, w.index, "the worker finished without reporting this image"))
                    self._close(w.job_id, (w.index,), event)
                self._emit(ev.BatchFinished(seconds, len(task.indices)))
                slot.state, slot.task, slot.work = WorkerState.ready, None, []

    def _close(self, job_id: str, indices: tuple[int, ...], event: ev.Event) -> None:
        """Report images as terminal and forget the job once none of its images is open."""
        self._emit(event)
        held = self.jobs.get(job_id)
        if held is not None:
            held.open.difference_update(indices)
            if not held.open:
                del self.jobs[job_id]

    def _died(self, slot: WorkerSlot) -> Lost:
        """Under the lock: the slot is freed now; what it held is settled by `_settle`, without the lock."""
        code = slot.process.exitcode
        reason = slot.kill_reason or (f"worker {slot.id} hit a device error and was restarted"
                                      if code == DEVICE_BROKEN_EXIT else f"worker {slot.id} died (exit code {code})")
        log.error("%s", reason if not slot.error else f"{reason}: {slot.error}")
        lost = Lost(slot.work, slot.upscale, slot.training, reason, slot.kill_reason is not None)
        was_ready = slot.state != WorkerState.starting
        slot.process, slot.task, slot.work, slot.upscale, slot.state = None, None, [], None, WorkerState.dead
        slot.training = None
        slot.failed_starts = 0 if was_ready else slot.failed_starts + 1
        slot.restart_at = time.monotonic() + min(30.0, 2.0 ** slot.failed_starts - 1)
        if slot.failed_starts >= MAX_RESTARTS:
            log.error("worker %d failed to start %d times; giving up on it", slot.id, slot.failed_starts)
        self._fail_if_hopeless()
        return lost

    def _settle(self, lost: Lost) -> None:
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
                held = self.jobs.get(w.job_id)
                if held is None or w.index not in held.open:
                    continue
                known = stored[w.job_id, w.index]
                if known:
                    self._close(w.job_id, (w.index,), ev.ImageSucceeded(w.job_id, w.index))
                elif not held.canceled and not lost.killed and w.attempts < MAX_ATTEMPTS and not self._all_given_up():
                    self._emit(ev.ImagesRequeued(w.job_id, (w.index,)))  # a new try overwrites whatever landed
                    self.pending.appendleft(w)
                elif known is None:
                    error = lost.reason if w.attempts < MAX_ATTEMPTS else f"{lost.reason}; it was the second try"
                    self.undecided.append((w, error))
                    log.warning("job %s image %d: storage cannot say whether it was stored; decided when it "
                                "answers", w.job_id, w.index)
                elif held.canceled:
                    self._close(w.job_id, (w.index,), ev.ImagesCanceled(w.job_id, (w.index,)))
                else:
                    error = lost.reason if w.attempts < MAX_ATTEMPTS else f"{lost.reason}; it was the second try"
                    self._close(w.job_id, (w.index,), ev.ImageFailed(w.job_id, w.index, error))

    def _decide_undecided(self) -> None:
        """Images whose fate waited on storage: stored → succeeded, else failed (or canceled) as they would have."""
        if not self.undecided or time.monotonic() < self._decide_at:
            return
        self._decide_at = time.monotonic() + DECIDE_EVERY_S
        with self.lock:
            waiting, self.undecided = self.undecided, []
        answers = [(w, error, self._already_stored(w)) for w, error in waiting]
        with self.lock:
            for w, error, known in answers:
                held = self.jobs.get(w.job_id)
                if held is None or w.index not in held.open:
                    continue
                if known is None:
                    self.undecided.append((w, error))
                elif known:
                    self._close(w.job_id, (w.index,), ev.ImageSucceeded(w.job_id, w.index))
                elif held.canceled:
                    self._close(w.job_id, (w.index,), ev.ImagesCanceled(w.job_id, (w.index,)))
                else:
                    self._close(w.job_id, (w.index,), ev.ImageFailed(w.job_id, w.index, error))

    def _training_lost(self, training: Training, lost: Lost) -> None:
        """A training whose worker died resumes from its last checkpoint on a fresh worker, twice at most."""
        with self.lock:
            if not lost.killed and training.attempts < MAX_TRAINING_ATTEMPTS and not self._all_given_up():
                self.trainings.appendleft(training)
                self._emit(ev.TrainingRequeued(training.task.training_id, lost.reason))
            else:
                self._emit(ev.TrainingFailed(training.task.training_id, lost.reason))

    def _already_stored(self, w: Work) -> bool | None:
        """Whether the image's object exists; None when storage cannot say."""
        held = self.jobs.get(w.job_id)
        if held is None:
            return False
        try:
            return self.storage.exists(held.job.images[w.index].key)
        except StorageError:
            return None

    def _restart_due(self) -> None:
        for slot in self.slots:
            if (slot.state == WorkerState.dead and slot.process is None and slot.failed_starts < MAX_RESTARTS
                    and time.monotonic() >= slot.restart_at and not self._stopping.is_set()):
                self._spawn(slot)

    def _all_given_up(self) -> bool:
        return all(s.failed_starts >= MAX_RESTARTS for s in self.slots)

    def _fail_if_hopeless(self) -> None:
        """With no worker left that could ever start, fail what waits rather than keep it forever."""
        if not self._all_given_up():
            return
        error = next((s.error for s in self.slots if s.error), "no worker could start")
        while self.pending:
            w = self.pending.popleft()
            self._close(w.job_id, (w.index,), ev.ImageFailed(w.job_id, w.index, error))
        while self.upscales:
            self.upscales.popleft().future.set_exception(RuntimeError(error))
        while self.trainings:
            self._emit(ev.TrainingFailed(self.trainings.popleft().task.training_id, error))

    def _check_deadlines(self) -> None:
        for slot in self.slots:
            if slot.task and slot.kill_reason is None and time.monotonic() > slot.deadline:
                if slot.training:
                    limit = getattr(self.settings, "training_timeout_s", 3 * 3600)
                    slot.kill_reason = f"timed out after {limit:.0f} s (TRAINING_TIMEOUT_S={limit:g})"
                else:
                    limit = self.settings.image_timeout_s * len(slot.work or [None])
                    slot.kill_reason = (f"timed out after {limit:.0f} s "
                                        f"(IMAGE_TIMEOUT_S={self.settings.image_timeout_s:g})")
                log.error("worker %d: %s; killing it", slot.id, slot.kill_reason)
                slot.process.kill()


def public_model_name(model_id: str) -> str:
    """What a PNG may say about the model: a hub id as it is, a local folder by its name only (never the
    server's paths)."""
    path = Path(model_id)
    return path.name if path.is_absolute() or model_id.startswith(".") or path.is_dir() else model_id


def batch_size(waiting: int, idle: int, max_batch: int) -> int:
    """How many of one job's waiting images the next idle worker takes: an even share of what waits
    among the idle workers (4 images, 4 workers: one each), at most MAX_BATCH."""
    return min(math.ceil(waiting / idle), max_batch)


def build_task(task_id: int, held: HeldJob, indices: list[int], model_id: str) -> m.Task:
    """The message for a batch of one job's images: everything a worker needs, nothing it must look up."""
    job, spec = held.job, held.job.spec
    images = [job.images[i] for i in indices]
    return m.Task(
        task_id=task_id, job_id=job.id, indices=tuple(indices), seeds=tuple(i.seed for i in images),
        keys=tuple(i.key for i in images), prompt=spec.prompt, negative_prompt=spec.negative_prompt,
        steps=spec.steps, guidance_scale=spec.guidance_scale, width=spec.width, height=spec.height,
        strength=spec.strength, input_key=job.input_key, loras=held.loras,
        # what made the picture, written into it: never where its owner is told (a webhook URL may hold a token)
        meta=spec.model_dump(mode="json", exclude={"seed", "num_images", "webhook", "webhook_events"})
        | {"model": public_model_name(model_id)},
        mode=spec.mode, layout_key=job.layout_key, shadow=spec.shadow, harmonize=spec.harmonize,
        preview_keys=tuple(preview_key(job.id, i) for i in indices),
    )
