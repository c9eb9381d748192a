"""Factories for tests: backends in their own uvicorn process, LoRAs and photos for the tiny model."""

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import requests
from PIL import Image

from backend.tools.seaweed import free_port

REPO = Path(__file__).resolve().parents[1]
SETTINGS_NAMES = ("MODEL_ID", "DEVICE", "WORKERS", "STORAGE_URL", "S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                  "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "API_KEY", "UPSCALER", "REPLICATE_API_TOKEN",
                  "REPLICATE_BASE_URL", "BACKEND_URL", "BG_REMOVAL_MODEL", "INPAINT_MODEL_ID")


class Backend:
    """The real backend, started with the contract's command in a uvicorn process of its own."""

    def __init__(self, env: dict[str, str], log_dir: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if k not in SETTINGS_NAMES} | env
        self.api_key = env.get("API_KEY")
        self.log_path = Path(log_dir) / f"backend-{self.port}.log"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 180, wait_for: str = "ok") -> "Backend":
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "backend.main:app", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=REPO, env=self.env | {"PYTHONUNBUFFERED": "1"}, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        self.wait_health(wait_for, timeout)
        return self

    def wait_health(self, status: str, timeout: float) -> dict:
        deadline, last = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"backend exited ({self.process.returncode}):\n{self.log()[-3000:]}")
            try:
                last = requests.get(f"{self.url}/health", timeout=5).json()
                if last["status"] == status:
                    return last
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"backend health never became {status!r} (last: {last}):\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    # ----- a small client -----
    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def get(self, path: str, **kw) -> requests.Response:
        return requests.get(self.url + path, headers=self.headers | kw.pop("headers", {}), timeout=30, **kw)

    def post(self, path: str, **kw) -> requests.Response:
        return requests.post(self.url + path, headers=self.headers | kw.pop("headers", {}), timeout=30, **kw)

    def delete(self, path: str, **kw) -> requests.Response:
        return requests.delete(self.url + path, headers=self.headers | kw.pop("headers", {}), timeout=30, **kw)

    def submit(self, spec: dict, photo: bytes | None = None, **kw) -> dict:
        if photo is None:
            r = self.post("/v1/jobs", json=spec, **kw)
        else:
            import json

            r = self.post("/v1/jobs", files={"spec": (None, json.dumps(spec), "application/json"),
                                              "image": ("photo.png", photo, "image/png")}, **kw)
        assert r.status_code == 202, r.text
        return r.json()

    def wait_job(self, job_id: str, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.get(f"/v1/jobs/{job_id}").json()
            if job["status"] in ("succeeded", "failed", "canceled"):
                return job
            time.sleep(0.2)
        raise TimeoutError(f"job {job_id} not terminal after {timeout}s: {job}\n{self.log()[-3000:]}")

    def add_product(self, name: str, trigger: str, lora: bytes, **fields) -> requests.Response:
        data = {"name": name, "trigger": trigger} | {k: str(v) for k, v in fields.items()}
        return self.post("/v1/products", data=data, files={"file": (f"{name}.safetensors", lora)})


class Recorder:  # the seam JobService hands work to (tests/unit/jobs)
    """An executor that holds nothing and records the jobs it is given."""

    native_size = None

    def __init__(self):
        self.submitted = []

    def submit(self, job, loras):
        self.submitted.append(job.id)

    def cancel(self, job_id):
        return False

    def holds(self, job_id):
        return False

    def hopeless(self):
        return False

    def pending_cost(self):
        return 0.0


def png_bytes(width: int = 64, height: int = 64, color=(200, 30, 30), fmt: str = "PNG", **save) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, format=fmt, **save)
    return out.getvalue()


def random_png(width: int, height: int, seed: int = 0) -> bytes:
    """Noise: every pixel differs, so a crop, a shift or a wrong scale shows."""
    import numpy as np

    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def png_size(png: bytes) -> tuple[int, int]:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    return image.size


def save_tiny_swin2sr(directory: Path, upscale: int = 4) -> Path:
    """A random Swin2SR small enough for CPU tests, saved as the local upscaler loads it (safetensors)."""
    import torch
    from transformers import Swin2SRConfig, Swin2SRForImageSuperResolution, Swin2SRImageProcessor

    torch.manual_seed(0)
    config = Swin2SRConfig(embed_dim=8, depths=[1], num_heads=[1], window_size=4, mlp_ratio=1.0, image_size=16,
                           upscale=upscale, upsampler="nearest+conv" if upscale == 4 else "pixelshuffle")
    Swin2SRForImageSuperResolution(config).save_pretrained(directory)
    Swin2SRImageProcessor().save_pretrained(directory)
    assert (directory / "model.safetensors").exists()
    return directory


def packshot(width: int = 40, height: int = 56, fmt: str = "PNG", background=None) -> bytes:
    """A product photo: a dark bottle-like shape with a label and a soft edge, on transparency (PNG,
    RGBA) or on a plain `background` colour (e.g. a JPEG on white)."""
    from PIL import ImageDraw, ImageFilter

    mask = Image.new("L", (width, height), 0)
    ImageDraw.Draw(mask).rounded_rectangle((8, 4, width - 9, height - 5), radius=6, fill=255)
    mask = mask.filter(ImageFilter.GaussianBlur(1))  # a soft edge, as real cut-outs have
    body = Image.new("RGB", (width, height), (30, 60, 140))
    ImageDraw.Draw(body).rectangle((10, height // 3, width - 11, height // 2), fill=(230, 200, 40))  # the label
    if background is None:
        img = body.convert("RGBA")
        img.putalpha(mask)
    else:
        img = Image.new("RGB", (width, height), background)
        img.paste(body, mask=mask)
    out = io.BytesIO()
    img.save(out, format=fmt)
    return out.getvalue()


def make_lora(model_dir: Path, seed: int, rank: int = 4) -> bytes:
    """A LoRA for the tiny model in diffusers layout, with random (non-zero) weights so it changes images."""
    from backend.tools.tiny import random_lora

    return random_lora(model_dir, seed, rank)


def decode_png(data: bytes):
    import numpy as np

    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB")).astype("int16")
