"""Live previews: what an image looks like while it sharpens, decoded for next to nothing.

Latents map to RGB almost linearly, so a 4x3 matrix and a bias give a blurry, colour-true preview
without the VAE (the factors are the published approximations ComfyUI ships in latent_formats.py, for
SD 1.x/2.x and SDXL). Previews are small JPEGs, written a few times per image: the final PNG is what counts.
"""

import io

import numpy as np
from PIL import Image

# rows: latent channels; columns: R, G, B
SD_FACTORS = ((0.3512, 0.2297, 0.3227), (0.3250, 0.4974, 0.2350), (-0.2829, 0.1762, 0.2721),
              (-0.2120, -0.2616, -0.7177))
SD_BIAS = (0.0, 0.0, 0.0)
XL_FACTORS = ((0.3651, 0.4232, 0.4341), (-0.2533, -0.0042, 0.1068), (0.1076, 0.1111, -0.0362),
              (-0.3165, -0.2492, -0.2188))
XL_BIAS = (0.1084, -0.0175, -0.0011)
PREVIEWS_PER_IMAGE = 4
MAX_SIDE = 256


def preview_steps(total: int) -> set[int]:
    """The steps (1-based) after which a preview is written: about four, never the last (the PNG follows)."""
    every = max(1, total // PREVIEWS_PER_IMAGE)
    return {step for step in range(every, total, every)}


def preview_jpegs(latents, xl: bool, width: int, height: int) -> list[bytes]:
    """One JPEG per latent in the batch (a torch tensor n x 4 x h x w), at most MAX_SIDE pixels a side."""
    if latents is None or latents.ndim != 4 or latents.shape[1] != 4:
        return []
    factors = np.asarray(XL_FACTORS if xl else SD_FACTORS, dtype=np.float32)
    bias = np.asarray(XL_BIAS if xl else SD_BIAS, dtype=np.float32)
    arr = latents.detach().float().cpu().numpy()
    rgb = np.einsum("nchw,cr->nhwr", arr, factors) + bias
    pixels = np.clip((rgb + 1) * 127.5, 0, 255).astype(np.uint8)
    scale = MAX_SIDE / max(width, height)
    size = (max(8, round(width * scale)), max(8, round(height * scale)))
    out = []
    for picture in pixels:
        buffer = io.BytesIO()
        Image.fromarray(picture).resize(size, Image.Resampling.BILINEAR).save(buffer, format="JPEG", quality=70)
        out.append(buffer.getvalue())
    return out
