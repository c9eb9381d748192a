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
import tempfile
from pathlib import Path

from backend.tools.bench_gpu import gpu_part
from backend.tools.bench_micro import SD15, TINY
from backend.tools.bench_overhead import CELERY_FIGURES, celery_part, cpu_part

ANCHORS = {"stable_fast_it_per_s_batch1_h100": 104.6, "floor_ms_per_cfg_step_h100": 2.0,
           "unet_tflop_per_cfg_step": 1.6, "peak_tflops_h100_issue": 790}


def table(title: str, headers: list[str], rows: list[list]) -> str:
    cells = [["-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]

    def line(row: list[str]) -> str:
        return "  ".join(c.rjust(w) for c, w in zip(row, widths))
    return "\n".join([f"== {title}", line(headers), line(["-" * w for w in widths]), *map(line, cells), ""])


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
    p.add_argument("--compile-mode", default="max-autotune",
                   help="torch.compile mode of part 2 (COMPILE=true uses default, as gpu-check measures it)")
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
