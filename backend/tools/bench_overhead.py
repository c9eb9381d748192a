"""Parts 1 and 3 of the benchmark (backend/tools/bench.py): what the system costs on top of the generation, on a
CPU with the tiny model.

Part 1 holds the backend (`bench_system.Server`, WORKERS=1, then 2) against the same pipeline calls made in this
process, with the batches the scheduler makes, and measures what place mode and live previews add to a generation.
Part 3 holds EXECUTOR=celery (a real Redis and GPU nodes) against the local executor, then times a second node.
"""

import os
import sys
import time
from pathlib import Path

from backend.tools.bench_system import (
    PROMPT,
    Server,
    clean_env,
    direct_once,
    job_spec,
    load_generator,
    median,
    system_once,
)


# ----- part 1: system overhead -----
def scheduler_batches(n: int, workers: int, max_batch: int = 8) -> list[int]:
    """The batches backend.gpu.scheduler makes of one n-image job with `workers` idle workers, by its own rule."""
    from backend.gpu.batches import batch_size

    batches, left = [], n
    while left:
        idle = workers
        while idle and left:
            size = batch_size(left, idle, max_batch)
            batches.append(size)
            left, idle = left - size, idle - 1
    return batches


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
