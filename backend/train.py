"""Train a product LoRA on Stable Diffusion (1.x/2.x) from a folder of photos, and optionally register it.

    python -m backend.train --images photos/ --trigger "sks bottle" --output out/bottle.safetensors \\
        [--video turn.mp4] [--steps 1000] [--rank 16] [--lr 1e-4] [--register --name bottle --category drinks]

The recipe is diffusers' LoRA fine-tuning: photos are encoded by the VAE, noised at a random timestep with the
noise scheduler, and the UNet (with peft LoRA layers on to_q, to_k, to_v and to_out.0; optionally the text
encoder too) learns to predict the noise (or v) under MSE. Random crops, flips and a little colour jitter give
it more views of the product. Checkpoints land in `<output stem>-checkpoints/` every `--checkpoint-every` steps;
`--resume` continues from the newest one. The output is a diffusers-layout `.safetensors` LoRA (alpha = rank),
which `POST /v1/products` stores as it is. See docs/TRAINING.md for what makes a good product LoRA.
"""

import argparse
import hashlib
import json
import logging
import random
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageEnhance, ImageOps, ImageSequence
from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from backend.config import DEFAULT_MODEL_ID

log = logging.getLogger("showroom.train")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
ANIMATED_SUFFIXES = {".gif", ".webp", ".png"}
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
PROBE_SEED = 1234


class TrainSettings(BaseSettings):
    """The trainer is its own command; it reads the contract's names for the model and the backend."""
    model_config = SettingsConfigDict(extra="ignore", case_sensitive=False)
    model_id: str = DEFAULT_MODEL_ID
    api_key: SecretStr | None = None
    backend_url: str = "http://localhost:8000"


@dataclass
class TrainResult:
    output: Path
    start_step: int
    end_step: int
    probe_loss_before: float
    probe_loss_after: float
    losses: list[float] = field(default_factory=list)


def _seed(*parts) -> int:
    """A stable 63-bit seed from the run's seed and the step: a resumed run draws what the straight run drew."""
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "little") >> 1


# ----- data -----

def video_frames(path: Path, count: int) -> list[Image.Image]:
    """`count` evenly spaced frames of an animated GIF/WebP/PNG (Pillow) or a video (PyAV, when installed)."""
    if path.suffix.lower() in ANIMATED_SUFFIXES:
        with Image.open(path) as img:
            frames = [f.convert("RGB") for f in ImageSequence.Iterator(img)]
    else:
        try:
            import av
        except ImportError:
            raise SystemExit(f"reading {path.suffix} video needs PyAV (pip install av), which is not installed; or "
                             f"extract frames yourself (ffmpeg -i {path.name} -vf fps=2 frames/%03d.png) and add "
                             "them to --images") from None
        with av.open(str(path)) as container:
            frames = [f.to_image().convert("RGB") for f in container.decode(video=0)]
    if not frames:
        raise SystemExit(f"no frames could be read from {path}")
    step = max(1, len(frames) // max(1, count))
    return frames[::step][:count]


def load_photos(folder: Path, video: Path | None, video_count: int, caption: str, trigger: str):
    """(image, caption) pairs: every photo in `folder` (a `name.txt` beside it overrides the caption) and frames."""
    if not folder.is_dir():
        raise SystemExit(f"--images {folder} is not a folder")
    items = []
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        with Image.open(path) as img:
            image = ImageOps.exif_transpose(img).convert("RGB")
        text = path.with_suffix(".txt")
        words = text.read_text().strip() if text.is_file() else caption.format(trigger=trigger)
        items.append((image, words if trigger in words else f"{trigger}, {words}"))
    if video:
        items += [(frame, caption.format(trigger=trigger)) for frame in video_frames(video, video_count)]
    if not items:
        raise SystemExit(f"no photos ({', '.join(sorted(IMAGE_SUFFIXES))}) found in {folder}")
    return items


def augment(image: Image.Image, size: int, rng: random.Random, crop: bool, flip: bool, jitter: float):
    """A random view: crop (60-100% of the short side, anywhere), mirror, a little brightness/contrast/colour."""
    w, h = image.size
    side = min(w, h)
    if crop:
        side = int(side * rng.uniform(0.6, 1.0))
        left, top = rng.randint(0, w - side), rng.randint(0, h - side)
    else:
        left, top = (w - side) // 2, (h - side) // 2
    view = image.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
    if flip and rng.random() < 0.5:
        view = ImageOps.mirror(view)
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color) if jitter else ():
        view = enhancer(view).enhance(1 + rng.uniform(-jitter, jitter))
    return view


def to_pixels(images: list[Image.Image]):
    import numpy as np
    import torch

    arr = np.stack([np.asarray(img, dtype=np.float32) / 127.5 - 1 for img in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()
