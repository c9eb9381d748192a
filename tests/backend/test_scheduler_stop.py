"""Stopping the local scheduler. A stop signal sent to the whole process group (Ctrl-C, `kill -TERM -<pgid>`, a
supervisor) reaches the workers as well as the backend: they leave only when the scheduler stops them, so
shutting down reports no dead worker and starts no new one; and it is quick, even with a task running."""

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from backend.models import Status
from tests.backend.test_scheduler import make_job, submit

REPO = Path(__file__).resolve().parents[2]


def wait_for(state: str, sched, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(w["state"] == state for w in sched.snapshot()["workers"]):
            return
        time.sleep(0.02)
    raise TimeoutError(f"workers not {state}: {sched.snapshot()}")


def test_a_stop_signal_to_the_process_group_leaves_the_workers_to_the_scheduler(run_scheduler, caplog):
    sched, store = run_scheduler(1)
    wait_for("ready", sched)
    process = sched.slots[0].process
    with caplog.at_level(logging.INFO, logger="showroom.scheduler"):
        os.kill(process.pid, signal.SIGTERM)  # the group's signal reaches the worker before the backend stops it
        time.sleep(1)  # a few of the dispatcher's ticks
        assert process.is_alive() and sched.slots[0].process is process
        started = time.monotonic()
        sched.stop(timeout=10)
        took = time.monotonic() - started
    assert process.exitcode == 0, "it left when told to, not killed"
    assert took < 3, f"stopping an idle worker took {took:.1f} s"
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert "starting" not in caplog.text, "no worker is started while the backend stops"


def test_stopping_interrupts_the_running_task_instead_of_waiting_for_it(run_scheduler):
    """The image is left as it was (running): the next start of the backend takes it up; stopping is not a cancel."""
    sched, store = run_scheduler(1, step_s=0.5)  # 10 s an image
    job = make_job(1)
    submit(sched, store, job)
    wait_for("busy", sched)
    process = sched.slots[0].process
    started = time.monotonic()
    sched.stop(timeout=10)
    took = time.monotonic() - started
    assert took < 3, f"stopping a busy worker took {took:.1f} s"
    assert process.exitcode == 0, "it left when told to, not killed"
    assert store.load(job.id).images[0].status != Status.canceled


def test_a_backend_that_exits_without_stopping_its_scheduler_does_not_hang():
    """The workers ignore SIGTERM, which multiprocessing sends them at exit (a forced quit skips the app's
    shutdown): the scheduler stops them then instead."""
    script = """
import sys, time
from types import SimpleNamespace
from backend.gpu.scheduler import Scheduler
from backend.storage import LocalStorage
from tests.backend.fake_worker import run_fake_worker

settings = SimpleNamespace(behaviour="ok", marker_dir=sys.argv[1], max_batch=8, step_s=0.01, image_timeout_s=30,
                           model_id="fake", storage_dir=sys.argv[1])
sched = Scheduler(settings, LocalStorage(sys.argv[1]), 2, worker_target=run_fake_worker)
sched.start()
while not all(w["state"] == "ready" for w in sched.snapshot()["workers"]):
    time.sleep(0.02)
print("ready", flush=True)
"""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-c", script, tmp], cwd=REPO, capture_output=True, text=True,
                              timeout=60)
    assert done.returncode == 0 and "ready" in done.stdout, done.stderr
    assert time.monotonic() - started < 30
