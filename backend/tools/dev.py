"""Run the whole system on one machine: `make run` (or `python -m backend.tools.dev`).

Starts an embedded S3 store (SeaweedFS, data in ./data/seaweed) unless STORAGE_URL points
elsewhere, the backend with the contract's command, and the Streamlit frontend (FRONTEND_PORT,
8501 by default). MODEL_ID=tiny writes and uses the tiny random pipeline (offline smoke runs: it
draws noise, fast). A part that dies is started again, after 1 s, then 2, 4, ... up to 30 s, while
the others keep serving: the page shows its own "offline" notice, and a backend that comes back
resumes its interrupted jobs. A part that dies 5 times within a minute is broken, not unlucky: the
run stops, saying which. Ctrl-C stops everything.
"""

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import requests

from backend.tools.seaweed import SeaweedS3, free_port

DATA = Path("data").resolve()
BUCKET = "showroom"
FIRST_DELAY_S, MAX_DELAY_S = 1.0, 30.0  # before a restart: doubled after each death, back to 1 s once it stays up
MAX_DEATHS, DEATH_WINDOW_S = 5, 60.0  # this many deaths within the window: a broken setting, not a crash to ride out


class GaveUp(Exception):
    """A part kept dying right away, so starting it again will not help."""


def exit_reason(code: int) -> str:
    """`exit code 1`, `exit code -9, killed by SIGKILL`."""
    if code >= 0:
        return f"exit code {code}"
    try:
        return f"exit code {code}, killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"exit code {code}, killed by signal {-code}"


@dataclass
class Child:
    """One part the runner keeps up. `launch` starts it and returns its process; `halt`, where given, stops it
    (SeaweedFS runs in a process group of its own), else a SIGTERM does."""
    name: str
    launch: Callable[[], subprocess.Popen]
    halt: Callable[[], None] | None = None
    process: subprocess.Popen | None = None
    deaths: list[float] = field(default_factory=list)  # time.monotonic() of those within the window
    delay_s: float = FIRST_DELAY_S  # before the next restart
    restart_at: float | None = None  # it is dead and waits for this time
    up_since: float = 0.0


class Supervisor:
    """Starts the parts, starts a dead one again after its backoff, and gives up on one that keeps dying."""

    def __init__(self, children: list[Child], first_delay_s: float = FIRST_DELAY_S, max_delay_s: float = MAX_DELAY_S,
                 max_deaths: int = MAX_DEATHS, window_s: float = DEATH_WINDOW_S, say: Callable[[str], None] = print):
        self.children, self.say = children, say
        self.first_delay_s, self.max_delay_s, self.max_deaths, self.window_s = (first_delay_s, max_delay_s,
                                                                                  max_deaths, window_s)
        self.launching = False  # True while a launch runs: SeaweedFS's waits until the store answers
        for child in children:
            child.delay_s = first_delay_s

    def start(self) -> None:
        """Launches each part not already running (the store is started first, the backend needs its address)."""
        for child in self.children:
            if child.process is None:
                child.process = self._launch(child)
            child.up_since = time.monotonic()

    def check(self) -> None:
        """One look at every part: raises GaveUp for one that keeps dying."""
        now = time.monotonic()
        for child in self.children:
            if child.restart_at is not None:
                if now >= child.restart_at:
                    self._restart(child)
                continue
            code = child.process.poll()
            if code is None:
                if now - child.up_since >= self.window_s:
                    child.delay_s = self.first_delay_s  # it stayed up: its next death is a new story
            else:
                self._died(child, exit_reason(code), now)

    def _died(self, child: Child, reason: str, now: float) -> None:
        child.deaths = [t for t in child.deaths if now - t < self.window_s] + [now]
        if len(child.deaths) >= self.max_deaths:
            raise GaveUp(f"the {child.name} stopped {len(child.deaths)} times within {self.window_s:g} s (last: "
                         f"{reason}), so it will not come back by itself; stopping everything. Its messages above "
                         "say why (a wrong setting, a port in use, ...)")
        self.say(f"runner: the {child.name} stopped ({reason}); starting it again in {child.delay_s:g} s")
        child.restart_at = now + child.delay_s
        child.delay_s = min(child.delay_s * 2, self.max_delay_s)

    def _restart(self, child: Child) -> None:
        child.restart_at = None
        try:
            child.process = self._launch(child)
        except Exception as e:  # SeaweedFS that does not come up: a death like any other
            if child.halt:
                child.halt()  # one that is still starting must not be left behind when it is tried again
            self._died(child, f"could not start: {e}", time.monotonic())
            return
        child.up_since = time.monotonic()

    def _launch(self, child: Child) -> subprocess.Popen:
        self.launching = True
        try:
            return child.launch()
        finally:
            self.launching = False

    def stop(self, wait_s: float = 20) -> None:
        """SIGTERM to every part at once, a SIGKILL to any still there after `wait_s`; the store last."""
        plain = [c.process for c in self.children if c.halt is None and c.process is not None]
        for process in plain:
            if process.poll() is None:
                process.terminate()
        for process in plain:
            try:
                process.wait(wait_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for child in self.children:
            if child.halt:
                child.halt()


def _local_s3_credentials() -> tuple[str, str]:
    """Credentials for the embedded store, made once and kept in data/ (never printed)."""
    path = DATA / ".s3-credentials"
    if not path.exists():
        DATA.mkdir(parents=True, exist_ok=True)
        path.write_text(f"showroom-{secrets.token_hex(4)}\n{secrets.token_urlsafe(24)}\n")
        path.chmod(0o600)
    key, secret = path.read_text().split()
    return key, secret


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _tiny_model() -> Path:
    """MODEL_ID=tiny: the tiny random pipeline, built once into data/ (offline, seconds)."""
    from backend.tools.tiny import build_tiny_pipeline

    tiny = DATA / "tiny-sd"
    if not (tiny / "model_index.json").exists():
        build_tiny_pipeline(tiny)
    return tiny


def _tiny_remover() -> Path:
    """With MODEL_ID=tiny: a tiny background remover that takes whatever is not white for the product, built once
    into data/ (the default, birefnet-general, is a download)."""
    from backend.tools.tiny import build_tiny_segmenter

    path = DATA / "tiny-segmenter.onnx"
    return path if path.exists() else build_tiny_segmenter(path)


def _local_store(env: dict) -> SeaweedS3:
    """No STORAGE_URL: SeaweedFS's S3 on this machine (data in data/seaweed), its settings put into `env`."""
    key, secret = _local_s3_credentials()
    store = SeaweedS3(DATA / "seaweed", BUCKET, key, secret, s3_port=8333 if _port_free(8333) else free_port())
    store.start()
    env |= {"STORAGE_URL": f"s3://{BUCKET}", "S3_ENDPOINT_URL": store.endpoint, "AWS_ACCESS_KEY_ID": key,
            "AWS_SECRET_ACCESS_KEY": secret, "AWS_REGION": "us-east-1"}
    print(f"storage: SeaweedFS S3 at {store.endpoint}, bucket {BUCKET}, data in {DATA / 'seaweed'}")
    return store


def _health(port: int) -> dict | None:
    try:
        return requests.get(f"http://127.0.0.1:{port}/health", timeout=2).json()
    except (requests.RequestException, ValueError):
        return None


def _parts(env: dict, store: SeaweedS3 | None, host: str, backend_port: int, frontend_port: int) -> list[Child]:
    """The store (already started, where it is this machine's), the backend and the frontend."""
    backend = Child("backend", lambda: subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "backend.main:app", "--host", host, "--port", str(backend_port)], env=env))
    frontend = Child("frontend", lambda: subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "frontend/streamlit_app.py", "--server.headless", "true",
         "--server.address", host, "--server.port", str(frontend_port)], env=env))
    storage = [Child("storage", lambda: store.start().process, store.stop, store.process)] if store else []
    return [*storage, backend, frontend]


def main() -> None:
    env = dict(os.environ)
    if env.get("MODEL_ID", "").lower() == "tiny":
        env["MODEL_ID"] = str(_tiny_model())
        if not env.get("BG_REMOVAL_MODEL"):  # offline too: products from photos, and place mode, need a remover
            env["BG_REMOVAL_MODEL"] = str(_tiny_remover())
    store = None if env.get("STORAGE_URL") else _local_store(env)
    backend_port = int(env.get("BACKEND_PORT", 8000))
    frontend_port = int(env.get("FRONTEND_PORT") or env.get("STREAMLIT_SERVER_PORT") or 8501)
    env.setdefault("BACKEND_URL", f"http://localhost:{backend_port}")
    # This machine only, unless HOST says otherwise: the page is a loopback client of a backend that
    # may have no API_KEY, so anyone who could reach either port could generate, upload and delete.
    host = env.get("HOST", "127.0.0.1")
    supervisor = Supervisor(_parts(env, store, host, backend_port, frontend_port))
    backend = next(c for c in supervisor.children if c.name == "backend")
    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True
        if supervisor.launching:  # SeaweedFS coming back waits until it answers: Ctrl-C does not wait with it
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    gave_up = None
    try:
        supervisor.start()
        print(f"backend:  {env['BACKEND_URL']}  (model {env.get('MODEL_ID', 'default')}; first start downloads it)")
        print(f"frontend: http://localhost:{frontend_port}    (Ctrl-C stops everything; your pictures stay in data/)")
        announced = None  # the backend process whose readiness was said
        while not stopping:
            supervisor.check()
            if announced is not backend.process and backend.restart_at is None and backend.process.poll() is None:
                health = _health(backend_port)
                if health and health.get("status") in ("ok", "degraded", "error"):
                    print(f"backend is {health['status']}: {health.get('detail') or 'ready'}; open "
                          f"http://localhost:{frontend_port}")
                    announced = backend.process
            time.sleep(1)
    except GaveUp as e:
        gave_up = e
    except KeyboardInterrupt:
        pass
    finally:
        supervisor.stop()
    if gave_up:
        sys.exit(f"runner: {gave_up}")


if __name__ == "__main__":
    main()
