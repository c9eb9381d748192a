"""This box's devices: how many GPUs the API may hand out (no torch), and the torch device a worker,
the trainer or the local upscaler runs on (imports torch when called). The one device picker."""

import json
from pathlib import Path


def visible_gpus(cuda_visible_devices: str | None) -> int:
    """Count the GPUs this process may use, without importing torch into the API process."""
    import shutil
    import subprocess

    if not shutil.which("nvidia-smi"):
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return count_visible(out, cuda_visible_devices)


def count_visible(nvidia_smi_list: str, cuda_visible_devices: str | None) -> int:
    """GPUs in `nvidia-smi -L`, narrowed by CUDA_VISIBLE_DEVICES as CUDA narrows them: its entries
    (indexes, GPU- or MIG- UUIDs) up to the first invalid one; "" or "-1" hides every GPU."""
    devices = [line.strip() for line in nvidia_smi_list.splitlines() if line.strip().startswith(("GPU ", "MIG "))]
    gpus = sum(d.startswith("GPU ") for d in devices)
    if cuda_visible_devices is None:
        return gpus
    count = 0
    for entry in (e.strip() for e in cuda_visible_devices.split(",")):
        valid = (entry.isdigit() and int(entry) < gpus) or (
            entry.startswith(("GPU-", "MIG-")) and any(entry in d for d in devices))
        if not valid:
            break
        count += 1
    return count


def native_size_guess(model_id: str) -> int:
    """The model's native size from its config files when local, else from its name."""
    folder = Path(model_id)
    try:
        unet = json.loads((folder / "unet" / "config.json").read_text())
        vae = json.loads((folder / "vae" / "config.json").read_text())
        return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
    except (OSError, KeyError, ValueError):
        return 1024 if "xl" in model_id.lower() else 512


def has_fp16_weights(model_id: str, part: str = "unet") -> bool:
    """Whether the model's `part` (a subfolder) has fp16 weight files (`*.fp16.safetensors`), which a GPU
    loads instead of the fp32 ones: half the download and the disk, and the only weights the Docker image
    bakes for these hub ids. A local folder may have them for some parts only."""
    folder = Path(model_id)
    if folder.is_dir():
        return any((folder / part).glob("*.fp16.safetensors"))
    return model_id.startswith(("stable-diffusion-v1-5/", "stabilityai/"))


def pick_device(preference: str, index: int = 0) -> str:
    """The torch device for DEVICE=`preference`; with several GPUs, the `index`-th (modulo their count)."""
    import torch

    if preference.startswith("cuda:") and torch.cuda.is_available():
        return preference  # a GPU named exactly (a worker's own, passed on to the trainer)
    if preference in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{index % torch.cuda.device_count()}"
    if preference.startswith("cuda"):
        raise RuntimeError(f"DEVICE={preference} but no CUDA GPU is visible to this process")
    if preference in ("auto", "mps") and torch.backends.mps.is_available():
        return "mps"
    if preference == "mps":
        raise RuntimeError("DEVICE=mps but MPS is not available on this machine")
    return "cpu"
