"""The scheduler's side of one GPU worker process: its state, the work it holds, and its life.

A slot starts its process (spawned, with a pipe and the shared integer naming the task to cancel), stops
it (the process ignores the stop signals sent to its process group: only its scheduler stops it), kills it
past its time limit, and when it dies hands back what it held (`Lost`) with the reason, and
puts its next start off: the longer, the more starts failed in a row, until MAX_RESTARTS of them give it
up. What becomes of the lost work is decided in backend.gpu.local_flights.
"""

import logging
import multiprocessing as mp
import signal
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from enum import Enum

from backend.gpu import executor as ev
from backend.gpu import messages as m
from backend.gpu.worker import DEVICE_BROKEN_EXIT, run_worker

log = logging.getLogger("showroom.scheduler")
MAX_RESTARTS = 3          # consecutive failed starts before a worker slot is given up


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
    stopped: str | None = None  # why it was asked to stop (its product deleted): it ends failed with that


@dataclass
class Lost:
    """What a dead worker held, settled after the lock is released (it may ask storage)."""
    work: list[Work]
    upscale: Upscale | None
    training: Training | None
    reason: str
    killed: bool


@dataclass
class WorkerSlot:
    id: int
    state: WorkerState = WorkerState.starting
    device: str = ""
    process: mp.Process | None = None
    conn: object = None
    cancel_task: object = None
    task: m.Task | m.UpscaleTask | m.TrainTask | None = None
    work: list[Work] = field(default_factory=list)
    upscale: Upscale | None = None
    training: Training | None = None
    deadline: float = 0.0
    kill_reason: str | None = None
    error: str | None = None
    failed_starts: int = 0
    restart_at: float = 0.0

    @property
    def given_up(self) -> bool:
        return self.failed_starts >= MAX_RESTARTS

    def spawn(self, ctx, target: Callable | None, settings, workers: int) -> None:
        """Start the worker process (`target`, else the real one); it reports Ready once its model is loaded.
        `workers` is how many run on this box."""
        parent, child = ctx.Pipe()
        self.cancel_task = ctx.Value("q", -1, lock=False)
        args = (self.id, settings, child, self.cancel_task, workers)
        self.process = ctx.Process(target=worker_main, args=(target or run_worker, *args),
                                   name=f"showroom-worker-{self.id}", daemon=True)
        self.process.start()
        child.close()
        self.conn, self.state, self.task, self.work, self.upscale = parent, WorkerState.starting, None, [], None
        self.kill_reason = None
        log.info("worker %d starting (pid %s)", self.id, self.process.pid)

    def loaded(self, device: str) -> None:
        """Its model is loaded: ready for work, and no longer counted as a failed start."""
        self.state, self.device, self.error, self.failed_starts = WorkerState.ready, device, None, 0

    def run(self, task: m.Task | m.UpscaleTask | m.TrainTask, limit_s: float, work: list[Work] | None = None,
            upscale: Upscale | None = None, training: Training | None = None) -> bool:
        """Send `task` (the work, upscale or training it stands for): busy until it is done or `limit_s` has
        passed. False when the pipe is broken: the process is dying, and its sentinel says so."""
        try:
            self.conn.send(task)
        except (OSError, ValueError):
            return False
        self.state, self.task, self.deadline = WorkerState.busy, task, time.monotonic() + limit_s
        self.work, self.upscale, self.training = work or [], upscale, training
        return True

    def freed(self) -> None:
        """Its task is done: ready for the next."""
        self.state, self.task, self.work, self.upscale, self.training = WorkerState.ready, None, [], None, None

    def ask_to_stop(self, interrupt: bool) -> None:
        """The backend is stopping: the process is told to leave once its task is over, and with `interrupt` that
        task (images or a training) is stopped at its next step."""
        if self.process is None:
            return
        if interrupt and self.task is not None:
            self.cancel_task.value = self.task.task_id
        try:
            self.conn.send(m.Stop())
        except (OSError, ValueError):
            pass

    def wait_stopped(self, deadline: float) -> None:
        """The process has left by `deadline` (time.monotonic()), else it is killed."""
        if self.process is None:
            return
        self.process.join(max(0.0, deadline - time.monotonic()))
        if self.process.is_alive():
            self.process.kill()
            self.process.join(2)

    def receive(self, handle: Callable) -> bool:
        """Hand each message waiting on the pipe to `handle(slot, message)`; False once the pipe is broken."""
        try:
            while self.conn.poll():
                handle(self, self.conn.recv())
        except (EOFError, OSError):
            return False
        return True

    def died(self) -> Lost:
        """The process is gone: the slot is freed now and what it held handed back; its next start waits."""
        code = self.process.exitcode
        reason = self.kill_reason or (f"worker {self.id} hit a device error and was restarted"
                                      if code == DEVICE_BROKEN_EXIT else f"worker {self.id} died (exit code {code})")
        log.error("%s", reason if not self.error else f"{reason}: {self.error}")
        lost = Lost(self.work, self.upscale, self.training, reason, self.kill_reason is not None)
        was_ready = self.state != WorkerState.starting
        self.process, self.task, self.work, self.upscale, self.state = None, None, [], None, WorkerState.dead
        self.training = None
        self.failed_starts = 0 if was_ready else self.failed_starts + 1
        self.restart_at = time.monotonic() + min(30.0, 2.0 ** self.failed_starts - 1)
        if self.given_up:
            log.error("worker %d failed to start %d times; giving up on it", self.id, self.failed_starts)
        return lost

    def restart_due(self) -> bool:
        return (self.state == WorkerState.dead and self.process is None and not self.given_up
                and time.monotonic() >= self.restart_at)

    def kill_if_overdue(self, settings) -> None:
        """A task past its time limit: the process is killed, and its death reported with the reason."""
        if self.task and self.kill_reason is None and time.monotonic() > self.deadline:
            if self.training:
                limit = getattr(settings, "training_timeout_s", 3 * 3600)
                self.kill_reason = ev.training_timed_out(limit)
            else:
                limit = settings.image_timeout_s * len(self.work or [None])
                self.kill_reason = (f"timed out after {limit:.0f} s "
                                    f"(IMAGE_TIMEOUT_S={settings.image_timeout_s:g})")
            log.error("worker %d: %s; killing it", self.id, self.kill_reason)
            self.process.kill()


def worker_main(target: Callable, *args) -> None:
    """A worker process's entry. Ctrl-C, `kill -TERM -<pgid>` or a supervisor stopping the service signal the
    whole process group: the workers as well as the backend. Left to die of it, a worker would be seen dead by
    the still-running dispatcher, reported as a failure and started again while the backend shuts down. So it
    ignores SIGINT and SIGTERM, as Python's own resource tracker process does, and leaves when its scheduler
    stops it (`Stop`, then a kill), or when its pipe closes (the backend was killed). Only a signal in the first
    instant of its start, before these lines, still kills it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    target(*args)


def all_given_up(slots: list[WorkerSlot]) -> bool:
    """True once no worker slot will ever start again (the model cannot be loaded)."""
    return all(s.given_up for s in slots)


def first_error(slots: list[WorkerSlot]) -> str:
    return next((s.error for s in slots if s.error), "no worker could start")
