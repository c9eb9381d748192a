"""The benchmark of issue 8: `python -m backend.tools.bench [--quick] [--s3] [--gpu | --no-gpu] [--celery]
[--no-overhead] [--json-out FILE]`.

Part 1, system overhead (always; on CPU with the tiny model unless --model). The real backend is
started with the contract's command (`uvicorn backend.main:app`) with WORKERS=1, then 2; jobs are
POSTed over HTTP and timed from the POST to the moment the last image object is in storage, polled
directly. The baseline is the same pipeline calls (`backend.gpu.pipeline.Generator.generate`, same spec,
the batches the scheduler makes) run one after another in this process, with the thread count each
worker of that run uses. Ratio = system / direct: 1.00 means the system costs nothing on top of the
generation; with 2 workers it falls below 1 when running the batches side by side pays.

Part 2, GPU (with CUDA, or forced with --gpu): the SD 1.5 architecture at full size with random
weights (no download): UNet steps for dtype x attention x memory format x batch, torch.compile, the
production pipeline (Generator) at batch 1/4/8, 512x512, 30 steps, CFG, load-and-warm time, and the
whole system, submit to first and last image, for 4 images. Read against the issue's anchors:
104.6 it/s (stable-fast, H100, batch 1) and a floor of 2.0 ms per CFG step (1.6 TFLOP at 790 TFLOP/s).

Part 3, EXECUTOR=celery (issue 17; opt-in with --celery, as it starts a Redis, a second backend and GPU
nodes, about a minute more on 2 cores): a real redis-server on a free port, a celery backend and GPU nodes
(`python -m backend.node`, one worker each), the tiny model on CPU. The same 4-image job is timed from the
POST to the last image object, interleaved with a local-executor backend (WORKERS=1) against one node:
ratio = celery / local (the issue's target: within 1.15). Then a second node joins, and submit → first
image (and last) is timed with 2 nodes. The machine's load average is recorded beside the figures: on a
shared CPU it moves them more than the executor does.

Prints plain tables, then, as its LAST line, one JSON object (also written to --json-out).
The launcher lives here, not in tests.factories: the bench ships with the backend (the GPU image has
no tests folder) and backend code does not import test code.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[2]
PROMPT, NEGATIVE = "a leather handbag on a marble table, soft studio light", "blurry, low quality"
ANCHORS = {"stable_fast_it_per_s_batch1_h100": 104.6, "floor_ms_per_cfg_step_h100": 2.0,
           "unet_tflop_per_cfg_step": 1.6, "peak_tflops_h100_issue": 790}


@dataclass(frozen=True)
class Arch:
    """A Stable Diffusion architecture to build with random weights: configs and native image size."""
    unet: dict
    vae: dict
    text: dict
    size: int


SD15 = Arch(  # stable-diffusion-v1-5's unet/, vae/ and text_encoder/ config.json (CLIP ViT-L/14's text tower)
    unet=dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, norm_num_groups=32,
              block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
              down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
              up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3),
    vae=dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
             block_out_channels=(128, 256, 512, 512), norm_num_groups=32,
             down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4),
    text=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
              vocab_size=49408, max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu"),
    size=512,
)
TINY = Arch(  # backend/tiny.py's sizes: part 2's code on a CPU in seconds (--gpu --arch tiny, and the tests)
    unet=dict(sample_size=32, in_channels=4, out_channels=4, layers_per_block=1, norm_num_groups=4,
              block_out_channels=(8, 16), cross_attention_dim=16, attention_head_dim=2,
              down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
              up_block_types=("CrossAttnUpBlock2D", "UpBlock2D")),
    vae=dict(in_channels=3, out_channels=3, latent_channels=4, sample_size=64, block_out_channels=(8, 16),
             norm_num_groups=4, down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2),
    text=dict(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=2, vocab_size=49408,
              max_position_embeddings=77, projection_dim=16),
    size=64,
)


def median(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 4) if values else None


def scheduler_batches(n: int, workers: int, max_batch: int = 8) -> list[int]:
    """The batches backend.gpu.scheduler makes of one n-image job with `workers` idle workers, by its own rule."""
    from backend.gpu.scheduler import batch_size

    batches, left = [], n
    while left:
        idle = workers
        while idle and left:
            size = batch_size(left, idle, max_batch)
            batches.append(size)
            left, idle = left - size, idle - 1
    return batches


def table(title: str, headers: list[str], rows: list[list]) -> str:
    cells = [["-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]

    def line(row: list[str]) -> str:
        return "  ".join(c.rjust(w) for c, w in zip(row, widths))
    return "\n".join([f"== {title}", line(headers), line(["-" * w for w in widths]), *map(line, cells), ""])


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


def place_overhead(gen, storage, spec: dict, batch: int, repeats: int) -> dict:
    """Place mode against generate at the same size, steps and batch: the inpainting pipeline, the final
    composite (product back pixel for pixel, shadow, light wrap), and the API side's cut-out and layout."""
    from dataclasses import replace

    from PIL import Image, ImageDraw

    from backend.gpu.messages import Task
    from backend.jobs.prepare import png_bytes
    from backend.place.cutout import cut_out
    from backend.place.layout import Placement, place

    photo = Image.new("RGBA", (spec["width"], spec["height"]), (0, 0, 0, 0))
    ImageDraw.Draw(photo).rounded_rectangle((spec["width"] // 4, spec["height"] // 8, 3 * spec["width"] // 4,
                                             7 * spec["height"] // 8), radius=8, fill=(40, 80, 160, 255))
    t0 = time.perf_counter()
    layer = place(cut_out(photo, None), spec["width"], spec["height"], Placement())
    layout_s = time.perf_counter() - t0
    storage.put("bench-direct/layout.png", png_bytes(layer), "image/png")
    idx = tuple(range(batch))
    task = Task(task_id=0, job_id="direct", indices=idx, seeds=tuple(spec["seed"] + i for i in idx),
                keys=tuple(f"bench-direct/{i}.png" for i in idx), prompt=spec["prompt"],
                negative_prompt=spec["negative_prompt"], steps=spec["steps"], guidance_scale=spec["guidance_scale"],
                width=spec["width"], height=spec["height"], strength=0.5)
    placed = replace(task, mode="place", layout_key="bench-direct/layout.png")

    def seconds(t) -> float:
        start = time.perf_counter()
        gen.generate(t, should_cancel=lambda: False, on_step=lambda step, total: None)
        return time.perf_counter() - start

    seconds(task), seconds(placed)  # warm: the inpainting pipeline is made on first use
    generate_s = median(seconds(task) for _ in range(repeats))
    place_s = median(seconds(placed) for _ in range(repeats))
    return {"batch": batch, "generate_s": generate_s, "place_s": place_s,
            "ratio": round(place_s / generate_s, 3) if generate_s else None, "layout_s": round(layout_s, 4)}


def preview_overhead(gen, spec: dict, batch: int, repeats: int) -> dict:
    """Live previews against none, same batch: they must never slow generation by more than a few percent."""
    from backend.gpu.messages import Task

    idx = tuple(range(batch))
    task = Task(task_id=0, job_id="direct", indices=idx, seeds=tuple(spec["seed"] + i for i in idx),
                keys=tuple(f"bench-direct/{i}.png" for i in idx), prompt=spec["prompt"],
                negative_prompt=spec["negative_prompt"], steps=spec["steps"], guidance_scale=spec["guidance_scale"],
                width=spec["width"], height=spec["height"], strength=0.5)
    previews = []

    def seconds(with_previews: bool) -> float:
        start = time.perf_counter()
        gen.generate(task, should_cancel=lambda: False, on_step=lambda step, total: None,
                     on_preview=previews.append if with_previews else None)
        return time.perf_counter() - start

    seconds(True)
    pairs = [(seconds(False), seconds(True)) for _ in range(repeats)]  # interleaved: the same background load
    plain, with_previews = median(a for a, _ in pairs), median(b for _, b in pairs)
    return {"batch": batch, "plain_s": plain, "previews_s": with_previews,
            "ratio": round(with_previews / plain, 3) if plain else None, "previews": len(previews)}


def png_encode_s(size: int) -> float:
    """Seconds backend.images.encode_png takes for one noise-like size x size picture (what random weights draw)."""
    import numpy as np
    from PIL import Image

    from backend.images import encode_png

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8))
    t0 = time.perf_counter()
    encode_png(image, {"prompt": PROMPT})
    return time.perf_counter() - t0


def load_generator(model_dir: str, device: str, storage, cache: Path):
    """Generator as a worker makes it: seconds to load, and to warm up."""
    from backend.gpu.pipeline import Generator

    t0 = time.perf_counter()
    gen = Generator(str(model_dir), device, storage, cache)
    load_s, t1 = time.perf_counter() - t0, time.perf_counter()
    gen.warm_up()
    return gen, load_s, time.perf_counter() - t1


# ----- part 1: system overhead -----
def cpu_part(args, model_dir: str, store_env: dict[str, str], work: Path) -> dict:
    import torch

    from backend.storage import open_storage

    storage = open_storage(store_env["STORAGE_URL"], endpoint_url=store_env.get("S3_ENDPOINT_URL"),
                           access_key=store_env.get("AWS_ACCESS_KEY_ID"),
                           secret_key=store_env.get("AWS_SECRET_ACCESS_KEY"), region=store_env.get("AWS_REGION"))
    gen, load_s, warm_s = load_generator(model_dir, "cpu", storage, work / "cache")
    rows, startup = [], {}
    for workers in args.workers:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))  # as each worker sets it (worker.py)
        env = store_env | {"MODEL_ID": str(model_dir), "DEVICE": "cpu", "WORKERS": str(workers), "UPSCALER": "off",
                           "RATE_LIMIT_PER_MINUTE": "0", "SHOWROOM_CACHE": str(work / "cache")}
        server = Server(env, work)
        try:
            startup[workers] = {"health_ok_s": server.start(), "worker_load_s": server.worker_load_s()}
            for n in args.counts:
                spec, batches = job_spec(n, args.size, args.steps), scheduler_batches(n, workers)
                direct_once(gen, storage, spec, batches)  # warm-up runs, not measured
                system_once(server, storage, spec, args.poll_s)
                runs = [(direct_once(gen, storage, spec, batches), system_once(server, storage, spec, args.poll_s))
                        for _ in range(args.repeats)]  # interleaved: both see the same background load
                rows.append(summarise(workers, n, batches, runs) | {"threads": torch.get_num_threads()})
                print(f"  {rows[-1]}", file=sys.stderr)
        finally:
            server.stop()
    fours = {r["workers"]: r for r in rows if r["images"] == 4}
    placed = place_overhead(gen, storage, job_spec(4, args.size, args.steps), 4, max(1, args.repeats))
    print(f"  place: {placed}", file=sys.stderr)
    previewed = preview_overhead(gen, job_spec(4, args.size, args.steps), 4, max(3, args.repeats))
    print(f"  previews: {previewed}", file=sys.stderr)
    return {"size": args.size, "steps": args.steps, "repeats": args.repeats, "poll_s": args.poll_s, "place": placed,
            "previews": previewed,
            "storage": storage.url.split(":")[0], "direct_load_s": load_s, "direct_warm_s": warm_s,
            "png_encode_512_s": median(png_encode_s(512) for _ in range(3)), "startup": startup, "rows": rows,
            "overhead_ratio_4img": (fours.get(1) or {}).get("ratio"),
            "overhead_ratio_4img_2workers": (fours.get(2) or {}).get("ratio"),
            "images_per_s": (fours.get(1) or next(iter(fours.values()), {})).get("images_per_s")}


def summarise(workers: int, n: int, batches: list[int], runs: list[tuple[dict, dict]]) -> dict:
    direct, system = [d for d, _ in runs], [s for _, s in runs]
    gen, write = median(d["gen_s"] for d in direct), median(d["gen_s"] + d["write_s"] for d in direct)
    last = median(s["last_s"] for s in system)
    return {"workers": workers, "images": n, "batches": "+".join(map(str, batches)), "direct_s": gen,
            "direct_write_s": write, "post_s": median(s["post_s"] for s in system),
            "dispatch_s": median(s["dispatch_s"] for s in system), "first_s": median(s["first_s"] for s in system),
            "last_s": last, "ratio": round(last / gen, 3), "ratio_vs_write": round(last / write, 3),
            "ratio_min": round(min(s["last_s"] for s in system) / min(d["gen_s"] for d in direct), 3),
            "poll_cpu": median(s["poll_cpu"] for s in system), "worker_s": median(s["worker_s"] for s in system),
            "outside_s": median(s["last_s"] - s["worker_s"] for s in system if s["worker_s"] is not None),
            "images_per_s": round(n / last, 3)}


# ----- part 3: EXECUTOR=celery against the local executor -----
CELERY_FIGURES = ("post_s", "dispatch_s", "first_s", "last_s")


def celery_part(args, model_dir: str, store_env: dict[str, str], work: Path) -> dict:
    """A 4-image job through Redis and one node against the local executor (WORKERS=1, the same threads per
    process), interleaved; then submit to first and last image with a second node. Seconds, medians."""
    from backend.storage import open_storage
    from backend.tools.celery_local import NodeProcess, RedisServer

    storage = open_storage(store_env["STORAGE_URL"], endpoint_url=store_env.get("S3_ENDPOINT_URL"),
                           access_key=store_env.get("AWS_ACCESS_KEY_ID"),
                           secret_key=store_env.get("AWS_SECRET_ACCESS_KEY"), region=store_env.get("AWS_REGION"))
    spec = job_spec(4, args.size, args.steps)
    base = store_env | {"MODEL_ID": str(model_dir), "DEVICE": "cpu", "WORKERS": "1", "UPSCALER": "off",
                        "RATE_LIMIT_PER_MINUTE": "0", "SHOWROOM_CACHE": str(work / "cache"), "HF_HUB_OFFLINE": "1"}
    load_before = os.getloadavg()[0]
    redis = RedisServer(work / "redis", "bench-redis-password-0123").start()
    celery_env = base | {"EXECUTOR": "celery", "BROKER_URL": redis.url}
    nodes = [NodeProcess("bench-1", clean_env(celery_env), work).start()]
    local, celery = Server(base, work), Server(celery_env, work)
    try:
        local.start()   # while the node loads
        celery.start()  # /health ok: the node's worker is ready
        system_once(local, storage, spec, args.poll_s), system_once(celery, storage, spec, args.poll_s)  # warm-up
        runs = [(system_once(local, storage, spec, args.poll_s), system_once(celery, storage, spec, args.poll_s))
                for _ in range(args.repeats)]  # interleaved: both see the same background load
        local.stop()
        nodes.append(NodeProcess("bench-2", clean_env(celery_env), work).start())
        celery.wait(lambda h: sum(w["state"] == "ready" for w in h["workers"]) == 2, 600, 0.2)
        warm = system_once(celery, storage, spec, args.poll_s)
        two = [system_once(celery, storage, spec, args.poll_s) for _ in range(args.repeats)]
    finally:
        for part in (local, celery, *nodes, redis):
            part.stop()
    local_last, celery_last = median(r["last_s"] for r, _ in runs), median(r["last_s"] for _, r in runs)
    out = {"size": args.size, "steps": args.steps, "repeats": args.repeats, "images": 4,
           "local_1worker": {k: median(r[k] for r, _ in runs) for k in CELERY_FIGURES},
           "celery_1node": {k: median(r[k] for _, r in runs) for k in CELERY_FIGURES},
           "celery_2nodes": {k: median(r[k] for r in two) for k in CELERY_FIGURES}
           | {"workers": sorted({w for r in [warm, *two] for w in r["workers"]})},  # the node workers it used
           "ratio": round(celery_last / local_last, 3), "target_ratio": 1.15,
           "ratio_min": round(min(r["last_s"] for _, r in runs) / min(r["last_s"] for r, _ in runs), 3),
           "load_avg_1m": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
           "cpus": os.cpu_count()}
    print(f"  celery: {out}", file=sys.stderr)
    return out


def celery_report(celery: dict) -> str:
    rows = [[name, *(celery[name][k] for k in CELERY_FIGURES)] for name in ("local_1worker", "celery_1node",
                                                                             "celery_2nodes")]
    load = celery["load_avg_1m"]
    size = f"{celery['size']}x{celery['size']}"
    return table(f"part 3: EXECUTOR=celery against local, {celery['images']} images, {size}, {celery['steps']} steps,"
                 f" seconds, median of {celery['repeats']}; ratio celery/local (1 node vs "
                 f"1 worker) {celery['ratio']} (target {celery['target_ratio']}), min {celery['ratio_min']}; "
                 f"load average {load['before']} -> {load['after']} on {celery['cpus']} CPUs",
                 ["executor", *CELERY_FIGURES], rows)


# ----- part 2: the GPU -----
def build_models(arch: Arch, device: str = "cpu", dtype=None, tokenizer=None, seed: int = 0):
    """UNet, VAE and CLIP text encoder of `arch` with random weights, made directly on `device`."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    ids = {}
    if tokenizer is not None:
        ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                   pad_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    with torch.device(device):
        models = (UNet2DConditionModel(**arch.unet), AutoencoderKL(**arch.vae),
                  CLIPTextModel(CLIPTextConfig(**arch.text, **ids)))
    return tuple(m.to(dtype).eval() if dtype is not None else m.eval() for m in models)


def count_tflop(arch: Arch) -> dict:
    """TFLOP of one CFG step, one VAE decode and the two prompt encodings, counted on the meta device."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    unet, vae, text = build_models(arch, device="meta")
    latent, ctx = arch.size // 8, arch.unet["cross_attention_dim"]
    with torch.device("meta"):
        calls = {"unet_cfg_step": lambda: unet(torch.randn(2, 4, latent, latent), torch.tensor([500, 500]),
                                               encoder_hidden_states=torch.randn(2, 77, ctx)),
                 "vae_decode": lambda: vae.decode(torch.randn(1, 4, latent, latent)),
                 "text_cfg": lambda: text(torch.zeros(2, 77, dtype=torch.long))}
        out = {}
        for name, call in calls.items():
            with FlopCounterMode(display=False) as counter, torch.no_grad():
                call()
            out[name] = counter.get_total_flops() / 1e12
    return out


def ceiling_fraction(tflop: float, seconds: float, peak_tflops: float) -> float:
    """Achieved TFLOP/s as a fraction of the peak."""
    return tflop / seconds / peak_tflops


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed_ms(fn, device: str, iters: int, warmup: int = 2) -> float:
    """Mean milliseconds per call after warm-up: CUDA events on a GPU, perf_counter elsewhere."""
    import torch

    for _ in range(warmup):
        fn()
    if not device.startswith("cuda"):
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        return (time.perf_counter() - t0) * 1000 / iters
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / iters


def unet_step(unet, arch: Arch, batch: int, device: str, dtype, channels_last: bool):
    """One CFG denoising step of `batch` images: the UNet on 2 x batch latents."""
    import torch

    latent = arch.size // 8
    x = torch.randn(2 * batch, 4, latent, latent, device=device, dtype=dtype)
    x = x.to(memory_format=torch.channels_last) if channels_last else x
    t = torch.full((2 * batch,), 500, device=device)
    ctx = torch.randn(2 * batch, 77, arch.unet["cross_attention_dim"], device=device, dtype=dtype)

    def step():
        with torch.inference_mode():
            return unet(x, t, encoder_hidden_states=ctx, return_dict=False)[0]
    return step


def unet_row(dtype: str, attention: str, channels_last: bool, batch: int, ms: float, tflop_step: float,
             args) -> dict:
    return {"dtype": dtype, "attention": attention, "channels_last": channels_last, "batch": batch,
            "ms_per_step": round(ms, 3), "it_per_s": round(1000 / ms, 2),
            "images_per_s_30": round(batch * 1000 / (ms * args.gpu_steps), 2),
            "ceiling": ceiling_fraction(tflop_step * batch, ms / 1000, args.peak_tflops)}


def decode_rows(args, vae, arch: Arch, device: str) -> list[dict]:
    """ms to decode one latent: the model's VAE against TAESD (TAESD_ID; madebyollin/taesd's architecture)."""
    import torch
    from diffusers import AutoencoderTiny

    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    taesd_config = {} if arch is SD15 else dict(encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
                                                  num_encoder_blocks=(1, 1), num_decoder_blocks=(1, 1))
    with torch.device(device):
        taesd = AutoencoderTiny(**taesd_config).to(dtype).eval()
    latent = torch.randn(1, 4, arch.size // 8, arch.size // 8, device=device, dtype=dtype)
    rows = []
    for name, decoder in (("vae", vae.to(dtype)), ("taesd", taesd)):
        def decode():
            with torch.inference_mode():
                return decoder.decode(latent, return_dict=False)[0]
        rows.append({"decoder": name, "ms": round(timed_ms(decode, device, args.iters), 3)})
    return rows


def unet_grid(args, unet, arch: Arch, device: str, tflop_step: float) -> list[dict]:
    """ms per CFG step for dtype x attention (SDPA or the classic math path) x memory format x batch."""
    import torch
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    rows = []
    for dtype_name in args.dtypes:
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
        unet.to(dtype)
        for attention, processor in (("sdpa", AttnProcessor2_0), ("math", AttnProcessor)):
            unet.set_attn_processor(processor())
            for channels_last in (True, False):
                unet.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
                for batch in args.batches:
                    ms = timed_ms(unet_step(unet, arch, batch, device, dtype, channels_last), device, args.iters)
                    rows.append(unet_row(dtype_name, attention, channels_last, batch, ms, tflop_step, args))
    return rows


def compile_rows(args, unet, arch: Arch, device: str, tflop_step: float) -> list[dict]:
    """torch.compile as COMPILE=true does it (fp16, SDPA, channels_last), one static-shape compile per batch."""
    import torch
    from diffusers.models.attention_processor import AttnProcessor2_0

    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    unet.to(dtype).to(memory_format=torch.channels_last)
    unet.set_attn_processor(AttnProcessor2_0())
    rows = []
    for batch in args.batches:
        torch._dynamo.reset()
        step = unet_step(torch.compile(unet, mode=args.compile_mode, fullgraph=True, dynamic=False), arch, batch,
                         device, dtype, True)
        t0 = time.perf_counter()
        step()
        sync(device)
        warm_s = time.perf_counter() - t0
        rows.append(unet_row("compiled", "sdpa", True, batch, timed_ms(step, device, args.iters), tflop_step, args)
                    | {"compile_warmup_s": round(warm_s, 2)})
    return rows


def save_pipeline(arch: Arch, folder: Path, device: str) -> Path:
    """The random pipeline in diffusers layout (fp16 on CUDA), for Generator and the backend (MODEL_ID)."""
    import torch
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    from backend.tools.tiny import _write_tokenizer

    _write_tokenizer(folder / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    unet, vae, text = build_models(arch, device, torch.float16 if device.startswith("cuda") else None, tokenizer)
    scheduler = DPMSolverMultistepScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                            num_train_timesteps=1000, steps_offset=1)
    StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text, tokenizer=tokenizer, scheduler=scheduler,
                            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
                            ).save_pretrained(folder, safe_serialization=True)
    return folder


def pipeline_rows(args, gen, arch: Arch, storage, image_tflop: float) -> list[dict]:
    """The production path (Generator.generate: fp16, SDPA, channels_last, own decode) per batch size."""
    rows = []
    for batch in args.batches:
        spec = job_spec(batch, arch.size, args.gpu_steps)
        cold, *runs = [direct_once(gen, storage, spec, [batch]) for _ in range(args.repeats + 1)]
        gen_s = median(r["gen_s"] for r in runs)
        rows.append({"batch": batch, "cold_s": round(cold["gen_s"], 4), "s": gen_s,
                     "s_per_image": round(gen_s / batch, 4), "images_per_s": round(batch / gen_s, 3),
                     "png_write_s": median(r["write_s"] for r in runs),
                     "ceiling": ceiling_fraction(image_tflop * batch, gen_s, args.peak_tflops)})
    return rows


def system_gpu(args, model_dir: Path, arch: Arch, device: str, work: Path) -> dict:
    """The whole system on the full-size model: start-up, then submit to first and last image of 4."""
    from backend.storage import LocalStorage

    env = {"MODEL_ID": str(model_dir), "DEVICE": "cuda" if device.startswith("cuda") else "cpu", "WORKERS": "1",
           "UPSCALER": "off", "RATE_LIMIT_PER_MINUTE": "0", "STORAGE_URL": f"file://{work / 'gpu-storage'}",
           "SHOWROOM_CACHE": str(work / "cache")}
    server = Server(env, work)
    try:
        out = {"health_ok_s": round(server.start(), 3), "worker_load_s": server.worker_load_s()}
        storage, spec = LocalStorage(work / "gpu-storage"), job_spec(4, arch.size, args.gpu_steps)
        runs = [system_once(server, storage, spec, args.poll_s) for _ in range(args.repeats + 1)][1:]
        return out | {k: median(r[k] for r in runs) for k in ("post_s", "dispatch_s", "first_s", "last_s")}
    finally:
        server.stop()


def gpu_part(args, arch: Arch, work: Path) -> dict:
    """Each section records its error and lets the others run: one failure must not cost a rented GPU's hour."""
    import torch

    from backend.storage import LocalStorage

    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    flops = count_tflop(arch)
    out = {"device": torch.cuda.get_device_name(0) if device != "cpu" else "cpu", "arch": args.arch,
           "size": arch.size, "steps": args.gpu_steps, "peak_tflops": args.peak_tflops, "tflop": flops,
           "unet": [], "pipeline": [], "errors": {}}

    def section(name: str, fn):
        try:
            return fn()
        except Exception as e:
            out["errors"][name] = f"{type(e).__name__}: {e}"[:500]
            print(f"  part 2, {name} failed: {out['errors'][name]}", file=sys.stderr)

    unet, vae, _ = build_models(arch, device)
    out["unet"] = section("unet", lambda: unet_grid(args, unet, arch, device, flops["unet_cfg_step"])) or []
    if args.compile:
        out["unet"] += section("compile", lambda: compile_rows(args, unet, arch, device, flops["unet_cfg_step"])) or []
    unet = None  # freed before the decoder and pipeline sections (None rather than del: the lambdas above name it)
    if device != "cpu":
        torch.cuda.empty_cache()
    b1 = [r for r in out["unet"] if r["batch"] == 1 and r["dtype"] == args.dtypes[0] and r["attention"] == "sdpa"
          and r["channels_last"]]
    out["unet_it_per_s_batch1"] = b1[0]["it_per_s"] if b1 else None
    out["decode"] = section("decode", lambda: decode_rows(args, vae, arch, device)) or []
    vae = None
    out["best_ceiling"] = max((r["ceiling"] for r in out["unet"]), default=None)

    model_dir = save_pipeline(arch, work / "sd-random", device)
    storage = LocalStorage(work / "gpu-direct")
    loaded = section("load", lambda: load_generator(model_dir, device, storage, work / "cache"))
    if loaded:
        gen, out["load_s"], out["warm_s"] = loaded
        image_tflop = args.gpu_steps * flops["unet_cfg_step"] + flops["vae_decode"] + flops["text_cfg"]
        out["pipeline"] = section("pipeline", lambda: pipeline_rows(args, gen, arch, storage, image_tflop)) or []
        del gen, loaded
        if device != "cpu":
            torch.cuda.empty_cache()
    out["images_per_s"] = max((r["images_per_s"] for r in out["pipeline"]), default=None)
    if args.gpu_system:
        out["system_4img"] = section("system", lambda: system_gpu(args, model_dir, arch, device, work))
    return out


# ----- the command -----
def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small and fast: the CI / 2-core setting (under 5 minutes)")
    p.add_argument("--gpu", action=argparse.BooleanOptionalAction, default=None,
                   help="run part 2 (default: when CUDA is available); --gpu without CUDA runs it on the CPU")
    p.add_argument("--overhead", action=argparse.BooleanOptionalAction, default=True,
                   help="run part 1, system overhead (--no-overhead: only the parts asked for)")
    p.add_argument("--celery", action="store_true",
                   help="run part 3, EXECUTOR=celery against local (starts redis-server and GPU nodes; about a "
                        "minute more on 2 cores, so not part of --quick's default)")
    p.add_argument("--model", help="diffusers folder for part 1 (default: the tiny random pipeline, built here)")
    p.add_argument("--workers", type=_ints, default=[1, 2], help="part 1 worker counts, e.g. 1,2")
    p.add_argument("--counts", type=_ints, default=[1, 4], help="part 1 images per job, e.g. 1,4")
    p.add_argument("--repeats", type=int, help="measured runs per figure, median reported (default 3 quick, else 5)")
    p.add_argument("--size", type=int, help="part 1 image size (default 64 quick, else 128)")
    p.add_argument("--steps", type=int, default=20, help="part 1 steps")
    p.add_argument("--s3", action="store_true", help="part 1 storage: an embedded SeaweedFS S3 instead of a folder")
    p.add_argument("--poll-ms", type=float, help="storage poll interval (default 2, or 20 with --s3: a LIST costs CPU)")
    p.add_argument("--arch", choices=("sd15", "tiny"), default="sd15", help="part 2 architecture")
    p.add_argument("--batches", type=_ints, default=[1, 4, 8], help="part 2 batch sizes")
    p.add_argument("--dtypes", type=lambda s: s.split(","), default=["fp16", "bf16"], help="part 2 UNet dtypes")
    p.add_argument("--gpu-steps", type=int, default=30)
    p.add_argument("--iters", type=int, default=10, help="UNet steps timed per figure")
    p.add_argument("--peak-tflops", type=float, default=790.0,
                   help="the ceiling: the issue's H100 anchor (the H100 SXM datasheet's dense fp16/bf16 is 989)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True, help="time torch.compile")
    p.add_argument("--compile-mode", default="max-autotune", help="backend.gpu.pipeline's mode with COMPILE=true")
    p.add_argument("--gpu-system", action=argparse.BooleanOptionalAction, default=True,
                   help="part 2 through the whole system too (a backend on the saved full-size model)")
    p.add_argument("--omp-passive", action=argparse.BooleanOptionalAction, default=True,
                   help="OMP_WAIT_POLICY=PASSIVE for this process and the backend: on a shared CPU, spinning "
                        "OpenMP threads make 2-thread runs several times slower whenever a neighbour runs")
    p.add_argument("--json-out", type=Path)
    args = p.parse_args(argv)
    args.repeats = args.repeats or (3 if args.quick else 5)
    args.size = args.size or (64 if args.quick else 128)
    args.poll_s = (args.poll_ms or (20.0 if args.s3 else 2.0)) / 1000
    return args


def report(result: dict) -> str:
    cpu, gpu = result["cpu"], result["gpu"]
    text = celery_report(result["celery"]) if result.get("celery") else ""
    if cpu:
        text = cpu_report(cpu) + text
    return text + (gpu_report(gpu) if gpu else "")


def cpu_report(cpu: dict) -> str:
    heads = ["workers", "threads", "images", "batches", "direct_s", "direct_write_s", "worker_s", "post_s",
             "dispatch_s", "first_s", "last_s", "outside_s", "ratio", "ratio_vs_write", "ratio_min", "images_per_s"]
    text = table(f"part 1: system vs direct, {cpu['size']}x{cpu['size']}, {cpu['steps']} steps, {cpu['storage']} "
                 f"storage, seconds, median of {cpu['repeats']}", heads, [[r[h] for h in heads] for r in cpu["rows"]])
    text += table("part 1: start-up and PNG encoding (seconds)",
                  ["workers", "health_ok_s", "worker_load_s", "png_encode_512_s"],
                  [[w, s["health_ok_s"], s["worker_load_s"], cpu["png_encode_512_s"]]
                   for w, s in cpu["startup"].items()])
    place = cpu["place"]
    text += table("part 1: place mode against generate, same size, steps and batch (seconds)",
                  ["batch", "generate_s", "place_s", "ratio", "layout_s"], [[place[h] for h in place]])
    seen = cpu["previews"]
    text += table("part 1: live previews against none, same batch (seconds)",
                  ["batch", "plain_s", "previews_s", "ratio", "previews"], [[seen[h] for h in seen]])
    return text


def gpu_report(gpu: dict) -> str:
    heads = ["dtype", "attention", "channels_last", "batch", "ms_per_step", "it_per_s", "images_per_s_30", "ceiling",
             "compile_warmup_s"]
    text = table(f"part 2: UNet, one CFG step ({gpu['tflop']['unet_cfg_step']:.3f} TFLOP per image), {gpu['device']}, "
                 f"ceiling = share of {gpu['peak_tflops']:g} TFLOP/s", heads,
                 [[r.get(h) for h in heads] for r in gpu["unet"]])
    heads = ["batch", "cold_s", "s", "s_per_image", "images_per_s", "png_write_s", "ceiling"]
    text += table(f"part 2: Generator (fp16, SDPA, channels_last), {gpu['size']}px, {gpu['steps']} steps, CFG",
                  heads, [[r[h] for h in heads] for r in gpu["pipeline"]])
    text += table("part 2: decoding one latent, VAE against TAESD (TAESD_ID)", ["decoder", "ms"],
                  [[r["decoder"], r["ms"]] for r in gpu.get("decode", [])])
    system = gpu.get("system_4img") or {}
    text += table("part 2: load, and the whole system for 4 images (seconds)",
                  ["load_s", "warm_s", "health_ok_s", "worker_load_s", "submit_to_first_s", "submit_to_last_s"],
                  [[gpu.get("load_s"), gpu.get("warm_s"), system.get("health_ok_s"), system.get("worker_load_s"),
                    system.get("first_s"), system.get("last_s")]])
    return text + "".join(f"part 2, {name} failed: {error}\n" for name, error in gpu["errors"].items())


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.omp_passive:  # read when torch loads libgomp: here, and in the backend, which inherits it
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    from backend.tools.seaweed import SeaweedS3

    with tempfile.TemporaryDirectory(prefix="showroom-bench-") as tmp:
        work, s3 = Path(tmp), None
        try:
            store_env = {"STORAGE_URL": f"file://{work / 'storage'}"}
            if args.s3:
                s3 = SeaweedS3(work / "seaweed", "bench", "bench-key", "bench-secret-0123456789").start()
                store_env = {"STORAGE_URL": "s3://bench/run", "S3_ENDPOINT_URL": s3.endpoint, "AWS_REGION": "us-east-1",
                             "AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key}
            if args.model is None:
                from backend.tools.tiny import build_tiny_pipeline

                args.model = str(build_tiny_pipeline(work / "tiny-sd"))
            cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
            result = {"machine": {"cpus": os.cpu_count(), "torch": torch.__version__, "cuda": cuda,
                                  "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                                  "load_avg_1m": round(os.getloadavg()[0], 2)},
                      "anchors": ANCHORS, "cpu": None, "gpu": None, "celery": None}
            if args.overhead:
                result["cpu"] = cpu_part(args, args.model, store_env, work)
            if args.celery:
                result["celery"] = celery_part(args, args.model, store_env, work)
            if (cuda is not None) if args.gpu is None else args.gpu:
                result["gpu"] = gpu_part(args, SD15 if args.arch == "sd15" else TINY, work)
        finally:
            if s3:
                s3.stop()
    gpu, celery = result["gpu"] or {}, result["celery"] or {}
    headline = ("overhead_ratio_4img", "overhead_ratio_4img_2workers", "images_per_s")
    result |= {key: (result["cpu"] or {}).get(key) for key in headline}
    result |= {"celery_ratio_4img": celery.get("ratio"),
               "celery_submit_to_first_2nodes_s": (celery.get("celery_2nodes") or {}).get("first_s")}
    result |= {"gpu_images_per_s": gpu.get("images_per_s"), "gpu_unet_it_per_s_batch1": gpu.get("unet_it_per_s_batch1"),
               "gpu_best_ceiling": gpu.get("best_ceiling"),
               "gpu_submit_to_last_4img_s": (gpu.get("system_4img") or {}).get("last_s")}
    print(report(result))
    line = json.dumps(result, default=str)
    if args.json_out:
        args.json_out.write_text(line + "\n")
    print(line, flush=True)
    return result


if __name__ == "__main__":
    main()
