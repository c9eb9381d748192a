"""Swin2SR from transformers as the local 4x upscaler, on this machine's GPU or CPU. torch and transformers
are imported when the model first loads, never at module load, so the API process stays light."""

import io
import logging
import threading

from PIL import Image

from backend.config import LOCAL_UPSCALER_MODEL as LOCAL_MODEL_ID
from backend.upscale.common import SCALE, UpscaleError, encode_png, fit_4x, image_size

log = logging.getLogger("showroom.upscale")


class LocalUpscaler:
    """Swin2SR from transformers on this machine's GPU or CPU. The model loads on first use and stays
    loaded; one image at a time runs through it. Large images are upscaled in tiles, each with a
    margin of context around it, so memory stays flat whatever the image size."""

    name = "local"

    def __init__(self, model_id: str = LOCAL_MODEL_ID, device: str = "auto", tile: int = 512, tile_overlap: int = 16,
                 gpu: int = 0):
        if device not in ("auto", "cuda", "cpu", "mps"):
            raise ValueError(f"device must be auto, cuda, cpu or mps, got {device!r}")
        if tile < 0 or tile_overlap < 0:
            raise ValueError(f"tile and tile_overlap must be >= 0, got {tile} and {tile_overlap}")
        self.model_id, self.device, self.tile, self.tile_overlap, self.gpu = model_id, device, tile, tile_overlap, gpu
        self._lock = threading.Lock()
        self._loaded = None  # (model, processor, torch device) once loaded

    def upscale(self, png: bytes, source_url: str | None = None) -> bytes:
        image_size(png, "the source image")
        image = Image.open(io.BytesIO(png)).convert("RGB")
        with self._lock:
            pixels = self._upscale_tiled(image)
        return fit_4x(png, encode_png(Image.fromarray(pixels)), "the local upscaler's output")

    def _load(self):
        if self._loaded is None:
            import torch
            from transformers import Swin2SRForImageSuperResolution, Swin2SRImageProcessor

            device = self._pick_device(torch)
            try:
                processor = Swin2SRImageProcessor.from_pretrained(self.model_id)
                model = Swin2SRForImageSuperResolution.from_pretrained(self.model_id, use_safetensors=True)
            except (OSError, ValueError) as exc:
                raise UpscaleError(f"could not load the upscaling model {self.model_id!r}: {exc}") from exc
            if model.config.upscale != SCALE:
                raise UpscaleError(f"{self.model_id} upscales {model.config.upscale}x; Showroom needs a 4x model")
            # fp32 everywhere: Swin2SR is small (about 12M parameters), and fp16 output was not verified here.
            self._loaded = (model.to(device).eval(), processor, device)
            log.info("local upscaler %s loaded on %s", self.model_id, device)
        return self._loaded

    def _pick_device(self, torch):
        from backend.gpu.devices import pick_device

        try:
            return torch.device(pick_device(self.device, self.gpu))
        except RuntimeError as e:
            raise UpscaleError(f"{e}; set DEVICE=auto or cpu") from None

    def _upscale_tiled(self, image: Image.Image):
        import numpy as np

        width, height = image.size
        step, margin = self.tile or max(width, height), self.tile_overlap
        out = np.empty((height * SCALE, width * SCALE, 3), dtype=np.uint8)
        for top in range(0, height, step):
            for left in range(0, width, step):
                right, bottom = min(left + step, width), min(top + step, height)
                ctx_left, ctx_top = max(left - margin, 0), max(top - margin, 0)
                context = image.crop((ctx_left, ctx_top, min(right + margin, width), min(bottom + margin, height)))
                upscaled = self._infer(context)
                y, x = (top - ctx_top) * SCALE, (left - ctx_left) * SCALE
                out[top * SCALE:bottom * SCALE, left * SCALE:right * SCALE] = \
                    upscaled[y:y + (bottom - top) * SCALE, x:x + (right - left) * SCALE]
        return out

    def _infer(self, image: Image.Image):
        """One tile through the model: a uint8 HxWx3 array exactly 4x the tile (the processor pads
        its bottom and right edges; the padding's share of the output is cut off here)."""
        import torch

        model, processor, device = self._load()
        pixel_values = processor(image, return_tensors="pt")["pixel_values"].to(device)
        with torch.inference_mode():
            reconstruction = model(pixel_values=pixel_values).reconstruction
        width, height = image.size
        if reconstruction.shape[-2] < height * SCALE or reconstruction.shape[-1] < width * SCALE:
            raise UpscaleError(f"{self.model_id} gave {tuple(reconstruction.shape[-2:])} for a "
                               f"{height}x{width} tile, less than 4x")
        reconstruction = reconstruction[0, :, :height * SCALE, :width * SCALE].clamp(0, 1)
        return reconstruction.mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()

