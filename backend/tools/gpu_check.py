"""`make gpu-check`: everything worth measuring on a GPU box, in one unattended run of at most ~8 minutes.

    python -m backend.tools.gpu_check [--out DIR] [--budget-s 480] [--tiny]

No download (the box may have no internet): SD 1.5 and SDXL are built at full size with random
weights, which cost the same FLOPs as the real ones. It measures
- SD 1.5 at 512², 30 steps, CFG: UNet it/s and the share of the FLOP ceiling per dtype x attention x
  memory format x batch (with and without torch.compile), VAE against TAESD, the production pipeline
  at batch 1/4/8 with peak GPU memory, and the whole system (uvicorn + one worker, file storage):
  cold start and submit -> first and last image of a 4-image job (backend.tools.bench's part 2);
- a `place` job against `generate` at the same size, steps and batch;
- SDXL at 1024², 30 steps: the pipeline at batch 1 and 4 with peak memory, and the whole system for 4;
- the guards on the real device: a batch that runs out of memory is made one image at a time, and an
  fp16 decode that overflows is made again in fp32;
- LoRA training (backend.lora.train, as a worker runs it) on SD 1.5 at 512 and SDXL at 1024: steps/s
  and peak GPU memory, UNet only and with the text encoders; on SD 1.5 a third row in fp16 with
  its gradient scaler (bf16 is the default on an H100/H200, so that path would not run otherwise);
- "sd15 compiled" (last, skipped when time is short): COMPILE as a worker runs it, the warm-up's compile
  and then jobs at batch 1, 2, with a product LoRA and without it again: seconds each and graphs made;
- "sd15 profile" (backend.tools.gpu_profile; issue #20: why a step is short of the FLOP ceiling): the
  production UNet (fp16, SDPA, channels_last) at batch 4 with CFG, 3 steps under torch.profiler after 2
  warm-up steps: wall ms per step, kernel ms per step and the GPU busy share (kernel time / wall time:
  well under 1 means launch- or CPU-bound), kernel launches per step, the top 15 ops and top 10 kernels by
  self GPU time, and the share by category (attention, convolution, matmul, norm, elementwise/other). On
  the CPU, self CPU time.
It writes one JSON file (`gpu-check-<date>-<gpu>.json` under --out; rewritten after every section, with
"complete": false until the end, so a run stopped from outside still leaves what it measured) and prints a
short table. It exits non-zero only when something is broken (a section raised), never because something is
slow; every section records its own error and lets the others run, and a section that runs four times past
its estimate (a hang) is cut and listed under "cut". `--tiny` runs the same code with toy
architectures on a CPU in a minute or two (the tests do).
"""

import argparse
import re
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from backend.tools import bench, bench_gpu, bench_micro, bench_overhead, bench_system, gpu_profile
from backend.tools.sections import Check

SDXL = bench_micro.Arch(  # stable-diffusion-xl-base-1.0's unet/, vae/, text_encoder/ (ViT-L) and text_encoder_2/ (bigG)
    unet=dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, norm_num_groups=32,
              block_out_channels=(320, 640, 1280), cross_attention_dim=2048, attention_head_dim=(5, 10, 20),
              transformer_layers_per_block=(1, 2, 10), use_linear_projection=True,
              addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
              down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
              up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")),
    vae=dict(bench_micro.SD15.vae, sample_size=1024, scaling_factor=0.13025, force_upcast=True),
    text=dict(bench_micro.SD15.text),
    size=1024,
)
SDXL_TEXT_2 = dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32,
                   vocab_size=49408, max_position_embeddings=77, projection_dim=1280, hidden_act="gelu")
TINY_XL = bench_micro.Arch(  # ENVIRONMENT.md's tiny SDXL: the real classes at toy size
    unet=dict(sample_size=32, in_channels=4, out_channels=4, layers_per_block=1, norm_num_groups=4,
              block_out_channels=(8, 16), cross_attention_dim=32, attention_head_dim=2, use_linear_projection=True,
              addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 16,
              down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
              up_block_types=("CrossAttnUpBlock2D", "UpBlock2D")),
    vae=dict(bench_micro.TINY.vae, force_upcast=True),
    text=dict(bench_micro.TINY.text),
    size=64,
)
TINY_XL_TEXT_2 = dict(bench_micro.TINY.text)


def save_sdxl(arch: bench_micro.Arch, text_2: dict, folder: Path, device: str) -> Path:
    """A random SDXL pipeline in diffusers layout (fp16 on CUDA), for Generator and the backend."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

    from backend.tools.tiny import _write_tokenizer

    _write_tokenizer(folder / "tokenizer")
    _write_tokenizer(folder / "tokenizer_2")
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    dtype = torch.float16 if device.startswith("cuda") else None
    unet, vae, text = bench_micro.build_models(arch, device, dtype, tokenizer)
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.eos_token_id)
    with torch.device(device):
        text_2 = CLIPTextModelWithProjection(CLIPTextConfig(**text_2, **ids))
    text_2 = (text_2.to(dtype) if dtype else text_2).eval()
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       num_train_timesteps=1000, steps_offset=1)
    StableDiffusionXLPipeline(vae=vae, text_encoder=text, text_encoder_2=text_2, tokenizer=tokenizer,
                              tokenizer_2=CLIPTokenizer.from_pretrained(folder / "tokenizer_2"), unet=unet,
                              scheduler=scheduler).save_pretrained(folder, safe_serialization=True)
    del unet, vae, text, text_2
    _free(device)
    return folder


def pipeline_memory_rows(gen, storage, size: int, steps: int, batches: list[int], repeats: int, device: str) -> list:
    """Generator.generate per batch size: seconds, images/s and the peak GPU memory it took."""
    import torch

    rows = []
    for batch in batches:
        spec = bench_system.job_spec(batch, size, steps)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        cold, *runs = [bench_system.direct_once(gen, storage, spec, [batch]) for _ in range(repeats + 1)]
        seconds = bench_system.median(r["gen_s"] for r in runs)
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
        rows.append({"batch": batch, "cold_s": round(cold["gen_s"], 3), "s": seconds,
                     "images_per_s": round(batch / seconds, 3), "peak_gib": round(peak, 2) if peak else None})
    return rows


def oom_fallback(gen, device: str, size: int) -> dict:
    """Leave room for one image, not eight: the worker's fallback must still make every image that fits."""
    import torch

    from backend.gpu.messages import Task
    from backend.gpu.worker import _generate

    def task(n: int) -> Task:
        return Task(task_id=1, job_id="oom", indices=tuple(range(n)), seeds=tuple(range(n)),
                    keys=tuple(f"oom/{i}.png" for i in range(n)), prompt=bench_system.PROMPT, negative_prompt="",
                    steps=4, guidance_scale=7.5, width=size, height=size, strength=0.5)

    blocker = None
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        gen.generate(task(1), lambda: False, lambda s, t: None)
        one = torch.cuda.max_memory_allocated() - base  # what one image needs beyond the weights
        free, _ = torch.cuda.mem_get_info()
        blocker = torch.empty(max(0, int(free - 2.5 * one)), dtype=torch.uint8, device=device)
    try:
        images = _generate(gen, task(8), lambda: False, lambda s, t: None)
    finally:
        del blocker
        _free(device)
    made = sum(not isinstance(i, str) for i in images)
    if made == 0:
        raise RuntimeError(f"no image of the batch was made after running out of memory: {images[0]}")
    return {"batch": 8, "made": made, "failed": [i for i in images if isinstance(i, str)][:1]}


def nan_decode(gen, device: str, size: int) -> dict:
    """Latents that overflow an fp16 decode: the guard decodes them again in fp32 and gets a real picture."""
    import torch
    from PIL import Image

    latent = torch.randn(1, 4, size // 8, size // 8, device=device) * 4000
    with torch.inference_mode():
        # Whether the guard had anything to do: the same latents through the decoder as it is, once.
        first = gen.decoder.decode(latent.to(gen.decoder.dtype) / gen.decoder.config.scaling_factor).sample
        overflowed = not bool(torch.isfinite(first).all())
        del first
        result = gen._decode(latent.to(gen.dtype))[0]
    if not isinstance(result, Image.Image):
        raise RuntimeError(f"the overflowing decode was not recovered: {result}")
    return {"dtype": str(gen.decoder_dtype), "overflowed_first": overflowed, "recovered": True}


def compiled_jobs(model_dir: Path, device: str, storage, work: Path, size: int, steps: int) -> dict:
    """COMPILE as a worker runs it (backend.gpu.pipeline.compile_in_place): the warm-up's compile, then jobs
    at batch 1, batch 2, with a product LoRA, and without it again; seconds each (a recompile shows as a
    slow one) and the graphs dynamo made. The LoRA jobs fail outright if diffusers cannot reach the UNet."""
    import torch

    from backend.contract import lora_key
    from backend.gpu.messages import LoraTask, Task
    from backend.gpu.pipeline import Generator
    from backend.tools.tiny import random_lora

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()  # reset() keeps them: bench's compile rows ran in this process before
    started = time.perf_counter()
    gen = Generator(str(model_dir), device, storage, work / "compiled-cache", compile_unet=True)
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    gen.warm_up()
    out = {"compiled": gen.compiled, "load_s": round(load_s, 2), "warm_up_s": round(time.perf_counter() - started, 2)}
    storage.put(lora_key("gpu-check-mug"), random_lora(model_dir, seed=1, rank=16, scale=1.0))
    mug = (LoraTask("gpu-check-mug", 1.0, lora_key("gpu-check-mug")),)
    jobs = []
    for name, batch, loras in (("batch 1", 1, ()), ("batch 1 again", 1, ()), ("batch 2", 2, ()),
                               ("with a LoRA", 1, mug), ("with the LoRA again", 1, mug), ("without it", 1, ())):
        task = Task(task_id=0, job_id="compiled", indices=tuple(range(batch)), seeds=tuple(range(batch)),
                    keys=tuple(f"compiled/{i}.png" for i in range(batch)), prompt=bench_system.PROMPT,
                    negative_prompt=bench_system.NEGATIVE, steps=steps, guidance_scale=7.5, width=size, height=size,
                    strength=0.5, loras=loras)
        t0 = time.perf_counter()
        images = gen.generate(task, lambda: False, lambda s, t: None)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        failed = [i for i in images if isinstance(i, str)]
        if failed:
            raise RuntimeError(f"the compiled UNet's job {name!r} failed: {failed[0]}")
        jobs.append({"job": name, "s": round(time.perf_counter() - t0, 2)})
    out["jobs"] = jobs
    counters = torch._dynamo.utils.counters
    out["graphs"] = int(counters["stats"].get("unique_graphs", 0))
    del gen
    torch._dynamo.reset()
    _free(device)
    return out


def training_rows(model_dir: Path, work: Path, resolution: int, steps: int, device: str,
                  fp16: bool = False) -> list[dict]:
    """Steps/s (after the first, which warms up) and peak memory of a product LoRA training, UNet only and
    with every text encoder, on four noise photos: the cost a "Teach Showroom this product" has here.
    `fp16`: a third row, UNet only, in fp16 with its gradient scaler (the default on an H100/H200 is bf16,
    so that path would otherwise never run on a GPU)."""
    import numpy as np
    import torch
    from PIL import Image

    from backend.lora import train as trainer

    photos = work / f"train-photos-{resolution}"
    photos.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for n in range(4):
        Image.fromarray(rng.integers(0, 255, (resolution, resolution, 3), dtype=np.uint8)).save(photos / f"{n}.png")
    rows = []
    variants = [[], ["--train-text-encoder"]] + ([["--mixed-precision", "fp16"]] if fp16 else [])
    for options in variants:
        marks: list[float] = []
        _free(device)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        args = trainer.parse_args(["--images", str(photos), "--trigger", "sks bottle", "--model", str(model_dir),
                                   "--output", str(work / "trained.safetensors"), "--steps", str(steps),
                                   "--resolution", str(resolution), "--device", device, "--checkpoint-every", "0",
                                   "--quiet", *options])
        result = trainer.train(args, on_step=lambda step, total, loss: marks.append(time.perf_counter()))
        rows.append({"text_encoders": "--train-text-encoder" in options, "resolution": resolution, "steps": steps,
                     "precision": "fp16" if "fp16" in options else "auto",
                     "steps_per_s": round((len(marks) - 1) / (marks[-1] - marks[0]), 3) if len(marks) > 1 else None,
                     "loss": [round(result.probe_loss_before, 4), round(result.probe_loss_after, 4)],
                     "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.startswith("cuda")
                     else None})
    return rows


def _free(device: str) -> None:
    import gc

    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def load(model_dir: Path, device: str, storage, work: Path):
    from backend.gpu.pipeline import Generator

    t0 = time.perf_counter()
    gen = Generator(str(model_dir), device, storage, work / "cache")
    gen.warm_up()
    return gen, round(time.perf_counter() - t0, 3)


def run(args) -> tuple[dict, Path]:
    import torch

    from backend.storage import LocalStorage

    cuda = torch.cuda.is_available() and not args.tiny
    device = "cuda:0" if cuda else "cpu"
    arch, xl_arch, xl_text = ((bench_micro.SD15, SDXL, SDXL_TEXT_2) if not args.tiny
                              else (bench_micro.TINY, TINY_XL, TINY_XL_TEXT_2))
    gpu = torch.cuda.get_device_name(0) if cuda else "cpu"
    today = date.today().isoformat()
    args.out.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9]+", "-", gpu).strip("-").lower()
    check = Check(args.budget_s, args.out / f"gpu-check-{today}-{name}.json")
    out = check.result
    out.update({"date": today, "torch": torch.__version__, "gpu": gpu, "tiny": args.tiny})
    steps, batches = (30, [1, 4, 8]) if not args.tiny else (2, [1, 2])
    with tempfile.TemporaryDirectory(prefix="showroom-gpu-check-") as tmp:
        work = Path(tmp)
        bench_args = bench.parse_args(["--gpu", "--arch", "tiny" if args.tiny else "sd15", "--batches",
                                       ",".join(map(str, batches)), "--gpu-steps", str(steps), "--repeats", "2",
                                       "--iters", "10" if cuda else "2", "--compile-mode", "default"]
                                      + ([] if cuda else ["--no-compile", "--dtypes", "bf16"]))
        out["sd15"] = check.section("sd15 (bench part 2)", lambda: bench_gpu.gpu_part(bench_args, arch, work), 120)
        for name, error in ((out["sd15"] or {}).get("errors") or {}).items():
            out["errors"][f"sd15 {name}"] = error
        storage = LocalStorage(work / "direct")
        sd_dir = work / "sd-random"
        loaded = check.section("sd15 load", lambda: load(sd_dir, device, storage, work), 20) if sd_dir.exists() else None
        if loaded:
            gen, out["sd15_load_s"] = loaded
            out["sd15_profile"] = check.section("sd15 profile", lambda: gpu_profile.profile_step(
                gen.t2i.unet, arch, device, gen.dtype, out["sd15"]), 20)
            out["sd15_memory"] = check.section("sd15 memory", lambda: pipeline_memory_rows(
                gen, storage, arch.size, steps, batches, 1, device), 30)
            out["place"] = check.section("place", lambda: bench_overhead.place_overhead(
                gen, storage, bench_system.job_spec(4, arch.size, steps), 4, 2), 30)
            out["guard_nan_decode"] = check.section("guard: nan decode", lambda: nan_decode(gen, device, arch.size), 10)
            out["guard_oom"] = check.section("guard: out of memory", lambda: oom_fallback(gen, device, arch.size), 30)
            del gen, loaded
            _free(device)
        xl_dir = check.section("sdxl build", lambda: save_sdxl(xl_arch, xl_text, work / "sdxl-random", device), 60)
        if xl_dir:
            xl = check.section("sdxl load", lambda: load(xl_dir, device, storage, work), 40)
            if xl:
                gen, out["sdxl_load_s"] = xl
                out["sdxl"] = check.section("sdxl pipeline", lambda: pipeline_memory_rows(
                    gen, storage, xl_arch.size, steps, [1, 4] if cuda else [1], 1, device), 60)
                del gen, xl
                _free(device)
            out["sdxl_system_4img"] = check.section("sdxl system", lambda: bench_gpu.system_gpu(
                replace_args(bench_args), xl_dir, xl_arch, device, work), 90)
        train_steps = 12 if cuda else 2
        if sd_dir.exists():
            out["sd15_training"] = check.section("sd15 training", lambda: training_rows(
                sd_dir, work, arch.size, train_steps, device, fp16=cuda), 60)
        if xl_dir:
            out["sdxl_training"] = check.section("sdxl training", lambda: training_rows(
                xl_dir, work, xl_arch.size, train_steps, device), 75)
        if sd_dir.exists():  # last: the longest to compile, and the least needed if time is short
            out["sd15_compiled"] = check.section("sd15 compiled", lambda: compiled_jobs(
                sd_dir, device, storage, work, arch.size, steps), 150)
    out["seconds"] = round(time.monotonic() - check.started, 1)
    out["complete"] = True
    check.save()
    return out, check.path


def replace_args(args):
    return argparse.Namespace(**(vars(args) | {"repeats": 1}))


def report(out: dict) -> str:
    sd = out.get("sd15") or {}
    system = sd.get("system_4img") or {}
    xl_system = out.get("sdxl_system_4img") or {}
    profile = out.get("sd15_profile") or {}
    rows = [
        ("GPU", out["gpu"]), ("torch", out["torch"]), ("seconds", out["seconds"]),
        ("SD 1.5 UNet it/s, batch 1", sd.get("unet_it_per_s_batch1")),
        ("SD 1.5 best share of the FLOP ceiling", sd.get("best_ceiling")),
        ("SD 1.5 images/s (pipeline, best batch)", sd.get("images_per_s")),
        ("SD 1.5 step at batch 4: ms, GPU busy share", (profile.get("step_ms"), profile.get("busy_share"))),
        ("SD 1.5 step at batch 4: top categories", ", ".join(
            f"{c} {v:.0%}" for c, v in list((profile.get("categories") or {}).items())[:3]) or None),
        ("SD 1.5 cold start: start -> health ok (s)", system.get("health_ok_s")),
        ("SD 1.5 4 images: submit -> first / last (s)", (system.get("first_s"), system.get("last_s"))),
        ("SD 1.5 peak GiB per batch", [(r["batch"], r["peak_gib"]) for r in out.get("sd15_memory") or []]),
        ("place / generate, 4 images", (out.get("place") or {}).get("ratio")),
        ("SDXL images/s per batch", [(r["batch"], r["images_per_s"]) for r in out.get("sdxl") or []]),
        ("SDXL peak GiB per batch", [(r["batch"], r["peak_gib"]) for r in out.get("sdxl") or []]),
        ("SDXL 4 images: submit -> first / last (s)", (xl_system.get("first_s"), xl_system.get("last_s"))),
        ("SD 1.5 training steps/s, UNet / + text encoder / fp16", [
            r["steps_per_s"] for r in out.get("sd15_training") or []]),
        ("SDXL training steps/s, UNet / + text encoders", [r["steps_per_s"] for r in out.get("sdxl_training") or []]),
        ("SDXL training peak GiB", [r["peak_gib"] for r in out.get("sdxl_training") or []]),
        ("COMPILE: warm-up s, then s per job", ((out.get("sd15_compiled") or {}).get("warm_up_s"), [
            j["s"] for j in (out.get("sd15_compiled") or {}).get("jobs", [])])),
        ("COMPILE: graphs made", (out.get("sd15_compiled") or {}).get("graphs")),
        ("guard: nan decode redone in fp32 (overflowed first)", (bool(out.get("guard_nan_decode")), (
            out.get("guard_nan_decode") or {}).get("overflowed_first"))),
        ("guard: out-of-memory batch made one at a time", (out.get("guard_oom") or {}).get("made")),
        ("skipped (time budget)", ", ".join(out["skipped"]) or "-"),
        ("cut (ran past its time limit)", ", ".join(out["cut"]) or "-"),
        ("errors", len(out["errors"])),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("docs/gpu"), help="folder for the JSON file")
    p.add_argument("--budget-s", type=float, default=480, help="sections that would start past this are skipped")
    p.add_argument("--tiny", action="store_true", help="toy architectures on the CPU: the check's own test")
    args = p.parse_args(argv)
    out, path = run(args)
    print(report(out))
    print(f"written: {path}")
    return 1 if out["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
