"""Part 2 of the benchmark (backend/tools/bench.py), on a GPU (or forced onto the CPU): the UNet and decoder
measurements (bench_micro), the production pipeline (Generator) per batch size, and the whole system on the
full-size random model, start-up and submit to first and last image. Each section records its own error.
"""

import sys
from pathlib import Path

from backend.tools.bench_micro import (
    Arch,
    build_models,
    ceiling_fraction,
    compile_rows,
    count_tflop,
    decode_rows,
    unet_grid,
)
from backend.tools.bench_system import Server, direct_once, job_spec, load_generator, median, system_once


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
