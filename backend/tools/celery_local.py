"""EXECUTOR=celery on this machine: Debian's redis-server on a free port and GPU nodes (`python -m
backend.node`) as processes of their own. Used by the benchmark and the tests; it lives here, not in
tests/, because the bench ships with the backend and backend code does not import test code.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import redis

from backend.tools.seaweed import free_port

REPO = Path(__file__).resolve().parents[2]


def wait_until(predicate, timeout: float = 60, every: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"{what} not met in {timeout} s")


class RedisServer:
    """redis-server as docs/NODES.md runs it: loopback, a password, append-only persistence in a folder."""

    def __init__(self, data_dir: Path, password: str):
        self.data_dir, self.password, self.port = Path(data_dir), password, free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20) -> "RedisServer":
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not Path(binary).exists():
            raise RuntimeError("redis-server is missing: apt-get install -y redis-server (or `make redis`)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.data_dir / "redis.log", "ab") as log:
            self.process = subprocess.Popen(
                [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--requirepass", self.password,
                 "--save", "", "--appendonly", "yes", "--dir", str(self.data_dir)], stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(self._answers, timeout, what="redis-server answering")
        return self

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"redis-server exited ({self.process.returncode}); see {self.data_dir / 'redis.log'}")
        try:
            return self.client().ping()
        except redis.RedisError:
            return False

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True, socket_timeout=5)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: the append-only file is flushed first
            self.process.wait(20)

    def restart(self) -> None:
        self.stop()
        self.start()


class NodeProcess:
    """`python -m backend.node --name NAME`, the contract's command, in its own session (so that a kill of its
    process group takes the whole node: the Celery main process and its GPU processes)."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path):
        self.name, self.env = name, env
        self.log_path = Path(log_dir) / f"node-{name}-{uuid.uuid4().hex[:6]}.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> "NodeProcess":
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "backend.node", "--name", self.name], cwd=REPO,
                                            env=self.env | {"PYTHONUNBUFFERED": "1"}, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """kill -9 of the whole node, as a box switched off looks to the broker."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)  # warm shutdown: its unfinished task goes back to the broker
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)
