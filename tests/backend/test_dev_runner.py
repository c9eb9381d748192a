"""`make run` keeps serving: a part that dies comes back after a backoff while the others carry on, one that keeps
dying ends the run with a message, and SIGTERM (Ctrl-C) still stops everything at once."""

import os
import signal
import subprocess
import sys
import time
import uuid

import psutil
import pytest
import requests

from backend.tools.celery_local import wait_until
from backend.tools.dev import Child, GaveUp, Supervisor
from backend.tools.seaweed import SeaweedS3, free_port
from tests.conftest import s3_env
from tests.factories import REPO, SETTINGS_NAMES

SLEEP = [sys.executable, "-c", "import time; time.sleep(120)"]


def sleeper(name: str) -> Child:
    """A stand-in part: a process that stays up until it is stopped."""
    return Child(name, lambda: subprocess.Popen(SLEEP))


@pytest.fixture
def supervise():
    made: list[Supervisor] = []

    def start(children: list[Child], **timing) -> Supervisor:
        said: list[str] = []
        supervisor = Supervisor(children, say=said.append, **timing)
        supervisor.said = said
        made.append(supervisor)
        supervisor.start()
        return supervisor

    yield start
    for supervisor in made:
        supervisor.stop(wait_s=5)


def check_until(supervisor: Supervisor, done, timeout: float = 10) -> None:
    """The runner's loop, faster: check the parts until `done()`."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"not done in {timeout} s; said: {supervisor.said}"
        supervisor.check()
        time.sleep(0.01)


def test_a_killed_backend_comes_back_while_the_others_keep_running(supervise):
    supervisor = supervise([sleeper("storage"), sleeper("backend"), sleeper("frontend")], first_delay_s=0.2)
    storage, backend, frontend = supervisor.children
    others = [storage.process, frontend.process]
    for delay in (0.2, 0.4):  # the backoff doubles
        killed, at = backend.process, time.monotonic()
        killed.kill()
        check_until(supervisor, lambda: backend.process is not killed)
        assert time.monotonic() - at >= delay
        assert supervisor.said[-1] == (f"runner: the backend stopped (exit code -9, killed by SIGKILL); "
                                       f"starting it again in {delay:g} s")
        assert backend.process.poll() is None
        assert [storage.process, frontend.process] == others and all(p.poll() is None for p in others)
    assert len(supervisor.said) == 2


def test_a_backend_that_keeps_dying_stops_the_run(supervise):
    broken = Child("backend", lambda: subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"]))
    supervisor = supervise([sleeper("storage"), broken, sleeper("frontend")], first_delay_s=0.01, max_delay_s=0.04)
    with pytest.raises(GaveUp, match=r"the backend stopped 5 times within 60 s \(last: exit code 3\), so it will not "
                                     r"come back by itself; stopping everything"):
        check_until(supervisor, lambda: False, timeout=30)
    assert [m[-6:] for m in supervisor.said] == ["0.01 s", "0.02 s", "0.04 s", "0.04 s"]  # doubled, up to the most
    others = [supervisor.children[0].process, supervisor.children[2].process]
    assert all(p.poll() is None for p in others)  # until the runner stops them
    supervisor.stop(wait_s=5)
    assert all(p.poll() is not None for p in others)


def test_a_part_that_stayed_up_starts_over_at_the_first_delay(supervise):
    supervisor = supervise([sleeper("frontend")], first_delay_s=0.05, window_s=0.5)
    frontend = supervisor.children[0]
    for _ in range(2):
        killed = frontend.process
        killed.kill()
        check_until(supervisor, lambda: frontend.process is not killed)
        assert supervisor.said[-1].endswith("starting it again in 0.05 s")
        check_until(supervisor, lambda: frontend.delay_s == 0.05)  # 0.1 right after its death, until it stays up


def test_a_store_that_cannot_start_again_counts_as_a_death(supervise):
    """SeaweedS3.start() raises when weed exits or never answers; one still starting is halted before the next try."""
    halted, launches = [], []

    def launch() -> subprocess.Popen:
        launches.append(1)
        if len(launches) > 1:
            raise RuntimeError("weed exited with code 1; see data/seaweed/weed.log")
        return subprocess.Popen(SLEEP)

    supervisor = supervise([Child("storage", launch, lambda: halted.append(1))], first_delay_s=0.01)
    supervisor.children[0].process.kill()
    check_until(supervisor, lambda: len(supervisor.said) == 2)
    assert supervisor.said[1] == ("runner: the storage stopped (could not start: weed exited with code 1; see "
                                  "data/seaweed/weed.log); starting it again in 0.02 s")
    assert halted


def test_a_killed_store_comes_back_at_the_same_address(supervise, tmp_path):
    """The real SeaweedFS, as `make run` keeps it: same ports, same data."""
    store = SeaweedS3(tmp_path / "seaweed", "showroom", "dev-test-key", "dev-test-secret-0123456789").start()
    supervisor = supervise([Child("storage", lambda: store.start().process, store.stop, store.process)],
                           first_delay_s=0.1)
    client = store.client()
    client.put_object(Bucket="showroom", Key="kept", Body=b"picture")
    killed = store.process
    os.killpg(killed.pid, signal.SIGKILL)
    check_until(supervisor, lambda: supervisor.children[0].process is not killed, timeout=60)
    assert supervisor.said == ["runner: the storage stopped (exit code -9, killed by SIGKILL); starting it again "
                               "in 0.1 s"]
    assert client.get_object(Bucket="showroom", Key="kept")["Body"].read() == b"picture"
    supervisor.stop()
    assert killed.poll() is not None and store.process is None


def test_stop_kills_a_part_that_ignores_sigterm(supervise):
    stubborn = Child("backend", lambda: subprocess.Popen(
        [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                               "print('ready', flush=True); time.sleep(120)"], stdout=subprocess.PIPE))
    supervisor = supervise([stubborn, sleeper("frontend")])
    assert stubborn.process.stdout.readline() == b"ready\n"
    started = time.monotonic()
    supervisor.stop(wait_s=0.5)
    assert time.monotonic() - started < 3
    assert [c.process.poll() for c in supervisor.children] == [-signal.SIGKILL, -signal.SIGTERM]
    stubborn.process.stdout.close()


def frontend_up(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).ok
    except requests.RequestException:
        return False


def part(runner: subprocess.Popen, word: str) -> psutil.Process:
    return next(p for p in psutil.Process(runner.pid).children() if word in " ".join(p.cmdline()))


def test_make_run_brings_a_killed_backend_back_and_stops_on_sigterm(tiny_model, tiny_segmenter, s3, tmp_path):
    """The real runner, backend and Streamlit (storage elsewhere: the session's SeaweedFS)."""
    backend_port, frontend_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items()
           if k not in (*SETTINGS_NAMES, "BACKEND_PORT", "FRONTEND_PORT", "STREAMLIT_SERVER_PORT", "HOST")}
    env |= s3_env(s3, f"dev-{uuid.uuid4().hex[:8]}") | {
        "MODEL_ID": str(tiny_model), "BG_REMOVAL_MODEL": str(tiny_segmenter), "WORKERS": "1", "DEVICE": "cpu",
        "BACKEND_PORT": str(backend_port), "FRONTEND_PORT": str(frontend_port), "PYTHONUNBUFFERED": "1"}
    log_path = tmp_path / "run.log"
    with open(log_path, "wb") as log:
        runner = subprocess.Popen([sys.executable, "-m", "backend.tools.dev"], cwd=REPO, env=env, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    said = log_path.read_text
    everything: list[psutil.Process] = []
    try:
        wait_until(lambda: "backend is ok" in said() or runner.poll() is not None, timeout=180, every=0.3)
        assert runner.poll() is None, said()[-3000:]
        wait_until(lambda: frontend_up(frontend_port), timeout=60, what="the frontend")
        backend, frontend = part(runner, "uvicorn"), part(runner, "streamlit")
        everything = [backend, *backend.children(recursive=True), frontend]

        backend.kill()
        assert frontend_up(frontend_port)  # the page stays, and shows its own "offline" notice
        wait_until(lambda: said().count("backend is ok") == 2, timeout=180, every=0.3, what=f"a restart:\n{said()}")
        assert ("runner: the backend stopped (exit code -9, killed by SIGKILL); starting it again in 1 s"
                in said()), said()[-3000:]
        assert part(runner, "uvicorn").pid != backend.pid
        assert part(runner, "streamlit").pid == frontend.pid and frontend_up(frontend_port)
        requests.get(f"http://127.0.0.1:{backend_port}/health", timeout=5).raise_for_status()

        everything += psutil.Process(runner.pid).children(recursive=True)
        started = time.monotonic()
        runner.send_signal(signal.SIGTERM)
        assert runner.wait(30) == 0
        _, left = psutil.wait_procs(everything, timeout=10)
        assert not left, left  # the killed backend's workers too: they leave when its pipe closes
        assert time.monotonic() - started < 20, said()[-3000:]
        assert "Traceback" not in said(), "a killed backend's worker leaves without one (its pipe closed: EOFError)"
    finally:
        if runner.poll() is None:
            os.killpg(runner.pid, signal.SIGKILL)
            runner.wait()
        for process in everything:
            if process.is_running():
                process.kill()
