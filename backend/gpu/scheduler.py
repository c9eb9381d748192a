"""The local executor: fans the images of jobs out over this box's worker processes, one per GPU.

One dispatcher thread owns the workers: it hands out batches (and local upscales and trainings), reads
the workers' messages, notices a worker that died or overran its time limit, and reports what happened
as events (backend.gpu.executor). It writes no manifest. Its lock guards memory only: no storage
call is ever made while it is held, so /health and the routes never wait on S3 behind it.

What it holds (jobs with images open, the work waiting for a worker, the events not yet handed out) and
what becomes of a dead worker's work are backend.gpu.local_flights'. A worker process's own life (start,
stop, time limit, death, restart) is its slot's (backend.gpu.worker_slot); batches are cut and built as
EXECUTOR=celery cuts them (backend.gpu.batches).
"""

import atexit
import logging
import multiprocessing as mp
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import replace
from multiprocessing.connection import wait

from backend.gpu import executor as ev
from backend.gpu import messages as m
from backend.gpu.batches import batch_size, build_task
from backend.gpu.local_flights import LocalFlights
from backend.gpu.worker_slot import Lost, Training, Upscale, Work, WorkerSlot, WorkerState, all_given_up, first_error
from backend.models import JobManifest
from backend.storage import Storage

log = logging.getLogger("showroom.scheduler")
TICK_S = 0.25


class Scheduler:
    def __init__(self, settings, storage: Storage, worker_count: int, on_event: ev.EventSink | None = None,
                 worker_target: Callable | None = None):
        self.settings, self.storage = settings, storage
        self.worker_target = worker_target
        self.ctx = mp.get_context("spawn")
        self.lock = threading.RLock()
        self.slots = [WorkerSlot(i) for i in range(worker_count)]
        self.flights = LocalFlights(storage, on_event or (lambda event: None), self.lock,
                                    hopeless=lambda: all_given_up(self.slots))
        self.native_size: int | None = None
        self._next_task = 0
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)

    # ----- the executor interface -----
    def start(self) -> None:
        for slot in self.slots:
            slot.spawn(self.ctx, self.worker_target, self.settings, len(self.slots))
        self._thread.start()
        # The workers ignore SIGTERM, with which multiprocessing ends them at exit: a process that leaves without
        # stop() (a forced quit skips the app's shutdown) would wait for them forever.
        atexit.register(self.stop)

    def stop(self, timeout: float = 10) -> None:
        """The dispatcher first, so that nothing is reported or restarted from here on; then the workers, told
        to leave together, what they run interrupted (it stays running in its manifest: the next start takes it
        up); any still there after `timeout` is killed."""
        atexit.unregister(self.stop)
        self._stopping.set()
        self._wake()
        self._thread.join(timeout)
        interrupt = not self._thread.is_alive()  # else a canceled task's report could still be applied as a cancel
        for slot in self.slots:
            slot.ask_to_stop(interrupt)
        deadline = time.monotonic() + timeout
        for slot in self.slots:
            slot.wait_stopped(deadline)
        with self.lock:
            self.flights.fail_upscales("the backend is stopping")

    def submit(self, job: JobManifest, loras: tuple) -> None:
        with self.lock:
            self.flights.hold(job, loras)
        self._wake()

    def cancel(self, job_id: str) -> bool:
        """Cancel what is queued at once and interrupt what is running."""
        with self.lock:
            if not self.flights.cancel(job_id):
                return False
            for slot in self.slots:
                if isinstance(slot.task, m.Task) and slot.task.job_id == job_id:
                    slot.cancel_task.value = slot.task.task_id
        self.flights.deliver()
        return True

    def holds(self, job_id: str) -> bool:
        with self.lock:
            return job_id in self.flights.jobs

    def upscale(self, source_key: str, target_key: str) -> Future:
        """Run the local upscaler on a worker's GPU; the future ends when the result is stored."""
        future: Future = Future()
        with self.lock:
            if self._stopping.is_set():
                raise RuntimeError("the backend is stopping")
            self.flights.upscales.append(Upscale(source_key, target_key, future))
        self._wake()
        return future

    def train(self, task: m.TrainTask) -> None:
        with self.lock:
            self.flights.trainings.append(Training(task))
        self._wake()

    def stop_training(self, training_id: str, reason: str) -> None:
        """A training that waits is dropped; one that runs stops at its next step. Either ends failed with
        `reason`."""
        with self.lock:
            self.flights.drop_training(training_id, reason)
            for slot in self.slots:
                if slot.training is not None and slot.training.task.training_id == training_id:
                    slot.training.stopped = reason
                    slot.cancel_task.value = slot.task.task_id
        self.flights.deliver()

    def hopeless(self) -> bool:
        """True once no worker slot will ever start again (the model cannot be loaded)."""
        with self.lock:
            return all_given_up(self.slots)

    def last_error(self) -> str:
        with self.lock:
            return first_error(self.slots)

    def pending_images(self) -> int:
        return self.flights.pending_images()

    def pending_cost(self) -> float:
        return self.flights.pending_cost()

    def snapshot(self) -> dict:
        with self.lock:
            return {
                "workers": [{"id": s.id, "device": s.device or "unknown", "state": s.state.value} for s in self.slots],
                "errors": [s.error for s in self.slots if s.error],
                "pending": len(self.flights.pending),
                "native_size": self.native_size,
            }

    @property
    def trainings(self) -> deque[Training]:
        """The trainings waiting for a worker."""
        return self.flights.trainings

    # ----- the dispatcher thread -----
    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass  # the pipe is full: the loop is already due to wake

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
        self.flights.deliver()
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
                    if not slot.receive(self._handle):
                        slot.process.join(5)
                        lost.append(self._died(slot))
                elif not slot.process.is_alive():
                    slot.receive(self._handle)  # what it sent before it died: its last images may have landed
                    lost.append(self._died(slot))
        for item in lost:
            self.flights.settle(item)
        self.flights.decide_undecided()
        with self.lock:
            self._check_deadlines()
            self._restart_due()
        self.flights.deliver()

    def _dispatch(self) -> None:
        flights, idle = self.flights, [s for s in self.slots if s.state == WorkerState.ready]
        while idle and flights.upscales:  # an upscale is one short image a person is waiting for: first
            self._assign_upscale(idle.pop(0), flights.upscales.popleft())
        while idle and flights.pending:
            head = flights.pending[0].job_id
            same_job = [w for w in flights.pending if w.job_id == head]
            size = batch_size(len(same_job), len(idle), self.settings.max_batch)
            batch = same_job[:size]
            flights.pending = deque(w for w in flights.pending if w not in batch)
            self._assign(idle.pop(0), batch)
        # Trainings go last and one at a time: the other GPUs keep generating while one learns a product.
        if idle and flights.trainings and not any(isinstance(s.task, m.TrainTask) for s in self.slots):
            self._assign_training(idle.pop(0), flights.trainings.popleft())

    def _assign_training(self, slot: WorkerSlot, training: Training) -> None:
        self._next_task += 1
        task = replace(training.task, task_id=self._next_task)
        if not slot.run(task, getattr(self.settings, "training_timeout_s", 3 * 3600), training=training):
            self.flights.trainings.appendleft(training)
            return
        training.attempts += 1
        self.flights.emit(ev.TrainingStarted(task.training_id, slot.id))
        log.info("training %s -> worker %d (attempt %d)", task.training_id, slot.id, training.attempts)

    def _assign(self, slot: WorkerSlot, batch: list[Work]) -> None:
        held = self.flights.jobs[batch[0].job_id]
        self._next_task += 1
        task = build_task(self._next_task, held, [w.index for w in batch], self.settings.model_id)
        if not slot.run(task, self.settings.image_timeout_s * len(batch), work=batch):
            self.flights.pending.extendleft(reversed(batch))
            return  # the sentinel reports the death on the next tick
        for w in batch:
            w.attempts += 1
        log.info("job %s images %s -> worker %d", task.job_id, list(task.indices), slot.id)

    def _assign_upscale(self, slot: WorkerSlot, upscale: Upscale) -> None:
        self._next_task += 1
        task = m.UpscaleTask(self._next_task, upscale.source_key, upscale.target_key)
        if not upscale.future.set_running_or_notify_cancel():
            return  # given up on by its caller before it started
        if not slot.run(task, self.settings.image_timeout_s, upscale=upscale):
            upscale.future.set_exception(RuntimeError("the worker chosen for the upscale stopped; try again"))
            return
        log.info("upscale of %s -> worker %d", upscale.source_key, slot.id)

    def _handle(self, slot: WorkerSlot, msg: m.FromWorker) -> None:
        task = slot.task
        match msg:
            case m.Ready(device=device, native_size=native_size, load_s=load_s):
                slot.loaded(device)
                self.native_size = native_size
                self.flights.emit(ev.WorkerReady(slot.id, load_s))
            case m.LoadFailed(error=error):
                slot.error = error
            case _ if task is None or msg.task_id != task.task_id:
                log.warning("worker %d sent %r for a task it does not hold", slot.id, msg)
            case m.Progress(step=step, total=total, loss=loss) if isinstance(task, m.TrainTask):
                self.flights.emit(ev.TrainingProgress(task.training_id, step, total, loss))
            case m.Done(error=error, info=info) if isinstance(task, m.TrainTask):
                stopped = slot.training.stopped if slot.training else None
                self.flights.emit(ev.TrainingSucceeded(task.training_id, info) if error is None
                                  else ev.TrainingFailed(task.training_id, stopped or error))
                slot.freed()
            case m.Done(error=error) if isinstance(task, m.UpscaleTask):
                upscale, slot.upscale = slot.upscale, None
                if error is None:
                    upscale.future.set_result(None)
                else:
                    upscale.future.set_exception(RuntimeError(error))
                slot.freed()
            case m.Started() | m.Progress() | m.Preview():
                self.flights.emit(ev.image_event(msg, task, slot.id))
            case m.ImageDone(index=index) | m.ImageFailed(index=index):
                slot.work = [w for w in slot.work if w.index != index]
                self.flights.close(task.job_id, (index,), ev.image_event(msg, task, slot.id))
            case m.Done(canceled=canceled, seconds=seconds):
                for w in slot.work:  # what the worker did not report: interrupted by cancel, or lost
                    event = (ev.ImagesCanceled(w.job_id, (w.index,)) if canceled else
                             ev.ImageFailed(w.job_id, w.index, "the worker finished without reporting this image"))
                    self.flights.close(w.job_id, (w.index,), event)
                self.flights.emit(ev.BatchFinished(seconds, len(task.indices)))
                slot.freed()

    def _died(self, slot: WorkerSlot) -> Lost:
        """Under the lock: the slot is freed now; what it held is settled by `flights.settle`, without the lock."""
        lost = slot.died()
        self._fail_if_hopeless()
        return lost

    def _restart_due(self) -> None:
        for slot in self.slots:
            if slot.restart_due() and not self._stopping.is_set():
                slot.spawn(self.ctx, self.worker_target, self.settings, len(self.slots))

    def _fail_if_hopeless(self) -> None:
        """With no worker left that could ever start, fail what waits rather than keep it forever."""
        if not all_given_up(self.slots):
            return
        self.flights.fail_waiting(first_error(self.slots))

    def _check_deadlines(self) -> None:
        for slot in self.slots:
            slot.kill_if_overdue(self.settings)
