"""One UNet step under torch.profiler, for `make gpu-check` (backend.tools.gpu_check): where the time of a
CFG step goes (GPU busy share, kernel launches, top ops and kernels, the share by kind of op), so the one
GPU run we may get already says why a step falls short of the FLOP ceiling (issue #20)."""

import time

from backend.tools import bench_micro

CATEGORIES = (  # (category, words in a lowercased op or kernel name); the first that matches wins: attention
    # first (flash kernels are cutlass ones), then convolution (cuDNN's are "..._fprop_implicit_gemm_...")
    ("attention", ("attention", "attn", "sdp", "flash", "fmha", "softmax")),
    ("convolution", ("conv", "fprop", "cudnn", "nchwtonhwc", "nhwctonchw")),
    ("matmul", ("gemm", "aten::mm", "addmm", "bmm", "matmul", "linear", "nvjet", "cublas")),
    ("norm", ("group_norm", "layer_norm", "groupnorm", "layernorm", "rowwisemoments", "computefusedparams")),
)
OTHER = "elementwise/other"


def op_category(name: str) -> str:
    """attention, convolution, matmul, norm or elementwise/other, from an aten op's or a CUDA kernel's name."""
    lower = name.lower()
    return next((category for category, words in CATEGORIES if any(w in lower for w in words)), OTHER)


def _self_us(row, cuda: bool) -> float:
    if not cuda:
        return row.self_cpu_time_total
    value = getattr(row, "self_device_time_total", None)  # torch 2.4 renamed self_cuda_time_total
    return value if value is not None else row.self_cuda_time_total


def profile_step(unet, arch: bench_micro.Arch, device: str, dtype, sd15: dict | None, batch: int = 4,
                 steps: int = 3) -> dict:
    """Where one CFG step of `batch` images (2 x batch latents) goes, as Generator runs the UNet: issue #20's
    "under 30% of the FLOP ceiling at batch 4: find out why", answered by the one GPU run we may get."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = device.startswith("cuda")
    step = bench_micro.unet_step(unet, arch, batch, device, dtype, channels_last=cuda)
    step_ms = bench_micro.timed_ms(step, device, steps)  # after its 2 warm-up steps; no profiler: the true wall time
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        bench_micro.sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        bench_micro.sync(device)
        profiled_ms = (time.perf_counter() - t0) * 1000 / steps
    rows = prof.key_averages()
    ops = [r for r in rows if r.device_type == DeviceType.CPU]  # on CUDA each op holds the kernels it launched
    kernels = [r for r in rows if r.device_type != DeviceType.CPU and not getattr(r, "is_user_annotation", False)]
    if cuda and not kernels:
        raise RuntimeError("the profiler recorded no CUDA kernel (no CUPTI?)")
    busy = kernels if cuda else ops
    busy_ms = sum(_self_us(r, cuda) for r in busy) / 1000 / steps
    total = sum(_self_us(r, cuda) for r in ops) or 1.0
    shares = dict.fromkeys([c for c, _ in CATEGORIES] + [OTHER], 0.0)
    for r in ops:
        shares[op_category(r.key)] += _self_us(r, cuda) / total

    def top(candidates, n: int) -> list[dict]:
        ranked = sorted(candidates, key=lambda r: _self_us(r, cuda), reverse=True)[:n]
        return [{"name": r.key[:120], "category": op_category(r.key), "calls": round(r.count / steps, 1),
                 "ms": round(_self_us(r, cuda) / 1000 / steps, 3), "share": round(_self_us(r, cuda) / total, 4)}
                for r in ranked if _self_us(r, cuda) > 0]

    tflop = (sd15 or {}).get("tflop", {}).get("unet_cfg_step")
    return {"batch": batch, "latents": 2 * batch, "dtype": str(dtype).removeprefix("torch."), "channels_last": cuda,
            "attention_processor": type(next(iter(unet.attn_processors.values()))).__name__,
            "step_ms": round(step_ms, 3), "profiled_step_ms": round(profiled_ms, 3),
            "busy_ms": round(busy_ms, 3),
            # kernels run at their speed under the profiler, the host does not: a GPU's busy time is set against
            # the unprofiled step; on the CPU the profiler's cost is in the ops' times too, so the profiled one
            "busy_share": round(min(1.0, busy_ms / (step_ms if cuda else profiled_ms)), 4),
            "launches_per_step": round(sum(r.count for r in busy) / steps, 1),  # kernels; aten op calls on the CPU
            "categories": {c: round(v, 4) for c, v in sorted(shares.items(), key=lambda kv: -kv[1])},
            "top_ops": top(ops, 15), "top_kernels": top(kernels, 10),
            "ceiling": (bench_micro.ceiling_fraction(tflop * batch, step_ms / 1000, sd15["peak_tflops"]) if tflop
                        else None)}
