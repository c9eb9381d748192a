"""The system under test and the direct baseline: the pieces every part of the benchmark (backend/tools/bench.py)
and gpu-check time with.

`Server` starts the real backend with the contract's command (`uvicorn backend.main:app`) in a process of its own;
`system_once` POSTs one job to it and times the job to its last image object in storage, polled directly;
`direct_once` makes the same pipeline calls in this process, one batch after another: the baseline the system is
held against. The launcher lives here, not in tests.factories: the bench ships with the backend (the GPU image has
no tests folder) and backend code does not import test code.
"""

import os
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[2]
PROMPT, NEGATIVE = "a leather handbag on a marble table, soft studio light", "blurry, low quality"


def median(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 4) if values else None


# ----- the backend under test, in its own uvicorn process -----
def clean_env(env: dict[str, str]) -> dict[str, str]:
    """This process's environment without any Showroom setting of the caller's, plus `env`."""
    from backend.config import Settings

    ours = {name.upper() for name in Settings.model_fields}  # no stray setting of the caller leaks in
    return {k: v for k, v in os.environ.items() if k.upper() not in ours} | env | {"PYTHONUNBUFFERED": "1"}


class Server:
    def __init__(self, env: dict[str, str], log_dir: Path):
        from backend.tools.seaweed import free_port

        self.env = clean_env(env)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_dir) / f"backend-{self.port}.log"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 900) -> float:
        """Start the backend; return the seconds until /health says ok (workers loaded and warm)."""
        started = time.perf_counter()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "backend.main:app", "--host", "127.0.0.1", "--port", str(self.port)],
                cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.wait(lambda h: h["status"] == "ok", timeout, 0.1)
        return time.perf_counter() - started

    def wait(self, done, timeout: float, every: float) -> dict:
        deadline, last = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the backend exited ({self.process.returncode}); see {self.log_path}")
            try:
                last = requests.get(f"{self.url}/health", timeout=5).json()
                if done(last):
                    return last
            except requests.RequestException:
                pass
            time.sleep(every)
        raise TimeoutError(f"backend not ready after {timeout:.0f}s (last /health: {last}); see {self.log_path}")

    def wait_idle(self) -> None:
        """Every worker ready and nothing queued, so each job starts from the same state."""
        self.wait(lambda h: h["queue"]["pending"] == 0 and all(w["state"] == "ready" for w in h["workers"]), 120, 0.02)

    def submit(self, spec: dict) -> dict:
        r = requests.post(f"{self.url}/v1/jobs", json=spec, timeout=30)
        if r.status_code != 202:
            raise RuntimeError(f"POST /v1/jobs answered {r.status_code}: {r.text}")
        return r.json()

    def job(self, job_id: str) -> dict:
        return requests.get(f"{self.url}/v1/jobs/{job_id}", timeout=30).json()

    def histogram(self, name: str) -> tuple[float, float]:
        """(sum, count) of one of the backend's /metrics histograms."""
        lines = requests.get(f"{self.url}/metrics", timeout=30).text.splitlines()
        return tuple(next((float(x.split()[-1]) for x in lines if x.startswith(f"{name}_{part} ")), 0.0)
                     for part in ("sum", "count"))

    def worker_load_s(self) -> float | None:
        """Mean seconds a worker took to load and warm, as the workers report it."""
        total, count = self.histogram("showroom_worker_load_seconds")
        return total / count if count else None

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


# ----- one measurement each -----
def job_spec(n: int, size: int, steps: int) -> dict:
    return dict(prompt=PROMPT, negative_prompt=NEGATIVE, num_images=n, steps=steps, guidance_scale=7.5,
                width=size, height=size, seed=1234)


def _stamp(iso: str | None) -> float | None:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() if iso else None


def system_once(server: Server, storage, spec: dict, poll_s: float, timeout: float = 600) -> dict:
    """POST one job and poll storage for its image objects: seconds from the POST to the first and last."""
    server.wait_idle()
    before = server.histogram("showroom_batch_seconds")
    wall, t0, cpu0 = time.time(), time.perf_counter(), time.process_time()
    ticket = server.submit(spec)
    post_s = time.perf_counter() - t0
    missing, arrived, next_check = {img["key"] for img in ticket["images"]}, [], t0 + 1.0
    while missing:
        present = missing.intersection(storage.list_files(f"jobs/{ticket['id']}"))  # one request for all keys
        arrived += [time.perf_counter() - t0] * len(present)
        missing -= present
        now = time.perf_counter()
        if missing and now > next_check:  # once a second, so this loop does not load the API process
            next_check = now + 1.0
            job = server.job(ticket["id"])
            ended = job["status"] in ("succeeded", "failed", "canceled")
            if (ended and not all(storage.exists(k) for k in missing)) or now - t0 > timeout:
                errors = {img["error"] for img in job["images"] if img["error"]}
                raise RuntimeError(f"job {ticket['id']} ended {job['status']} without all images: {errors}")
        time.sleep(poll_s)
    poll_cpu = (time.process_time() - cpu0) / max(arrived)  # the share of a core this loop took from the system
    images = server.job(ticket["id"])["images"]
    started = [_stamp(img["started_at"]) for img in images]
    server.wait_idle()  # every batch's Done is in: the workers' own seconds per batch (generate, PNG, write)
    after = server.histogram("showroom_batch_seconds")
    batch_s, batches = after[0] - before[0], after[1] - before[1]
    return {"post_s": post_s, "first_s": min(arrived), "last_s": max(arrived), "poll_cpu": poll_cpu,
            "dispatch_s": min(s for s in started if s) - wall if any(started) else None,
            "worker_s": batch_s / batches if batches else None, "workers": sorted({img["worker"] for img in images})}


def direct_once(gen, storage, spec: dict, batches: list[int]) -> dict:
    """The same pipeline calls in this process, batch after batch; then the PNG encoding and writes."""
    from backend.gpu.messages import Task
    from backend.images import encode_png

    t0, images, first = time.perf_counter(), [], 0
    for size in batches:
        idx = tuple(range(first, first + size))
        task = Task(task_id=0, job_id="direct", indices=idx, seeds=tuple(spec["seed"] + i for i in idx),
                    keys=tuple(f"bench-direct/{i}.png" for i in idx), prompt=spec["prompt"],
                    negative_prompt=spec["negative_prompt"], steps=spec["steps"],
                    guidance_scale=spec["guidance_scale"], width=spec["width"], height=spec["height"], strength=0.5)
        images += gen.generate(task, should_cancel=lambda: False, on_step=lambda step, total: None)
        first += size
    gen_s, t1 = time.perf_counter() - t0, time.perf_counter()
    for i, image in enumerate(images):
        if isinstance(image, str):
            raise RuntimeError(f"direct generation failed: {image}")
        storage.put(f"bench-direct/{i}.png", encode_png(image, spec | {"seed": spec["seed"] + i}), "image/png")
    return {"gen_s": gen_s, "write_s": time.perf_counter() - t1}


def load_generator(model_dir: str, device: str, storage, cache: Path):
    """Generator as a worker makes it: seconds to load, and to warm up."""
    from backend.gpu.pipeline import Generator

    t0 = time.perf_counter()
    gen = Generator(str(model_dir), device, storage, cache)
    load_s, t1 = time.perf_counter() - t0, time.perf_counter()
    gen.warm_up()
    return gen, load_s, time.perf_counter() - t1
