"""Pictures in and out: judging an uploaded photo by its content, and writing PNGs with their parameters."""

import io
import json
import warnings

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin

ACCEPTED_FORMATS = {"PNG", "JPEG", "WEBP"}


class BadImage(ValueError):
    """The upload is not a usable picture; the message says why."""


def has_transparency(img: Image.Image) -> bool:
    """True when the image carries an alpha channel (or a transparent colour) that is not fully opaque."""
    if img.mode not in ("RGBA", "LA", "PA", "RGBa", "La") and "transparency" not in img.info:
        return False
    lowest, _ = img.convert("RGBA").getchannel("A").getextrema()
    return lowest < 255


def normalize_photo(data: bytes, *, max_bytes: int, max_pixels: int,
                    max_short_side: int | None = None) -> tuple[bytes, tuple[int, int]]:
    """Check an uploaded photo by its content and return it as a clean PNG with no EXIF, upright, and
    its (width, height). Transparency is kept (RGBA): a packshot's own cut-out is the best there is.
    With `max_short_side`, a photo whose short side is longer is scaled down to it, aspect kept.

    Refuses: empty or oversized uploads, anything that is not PNG/JPEG/WebP whatever its name
    or content type says, truncated files, and images whose header claims more pixels than
    `max_pixels` (decompression bombs are refused before any pixel is decoded).
    """
    if not data:
        raise BadImage("the photo is empty")
    if len(data) > max_bytes:
        raise BadImage(f"the photo is {len(data)} bytes; the limit is {max_bytes} bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.format not in ACCEPTED_FORMATS:
                raise BadImage(f"the photo must be PNG, JPEG or WebP, got {img.format}")
            width, height = img.size
            if width * height > max_pixels:
                raise BadImage(f"the photo is {width}x{height} pixels; the limit is {max_pixels} pixels in all")
            img.load()
            img = ImageOps.exif_transpose(img)
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadImage(f"the photo claims more than {max_pixels} pixels") from None
    except Exception as e:  # PIL raises many kinds for broken input: all mean the same to the user
        raise BadImage(f"the photo could not be read as an image ({type(e).__name__}: {e})") from None
    img = _eight_bit(img)
    img = img.convert("RGBA") if has_transparency(img) else img.convert("RGB")  # an alpha hiding nothing: RGB
    if max_short_side and min(img.size) > max_short_side:
        scale = max_short_side / min(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.LANCZOS)
    out = io.BytesIO()
    img.save(out, format="PNG")  # a fresh PNG carries no EXIF, GPS or maker notes
    return out.getvalue(), img.size


def _eight_bit(img: Image.Image) -> Image.Image:
    """A 16-bit greyscale PNG (PIL's "I;16") as 8-bit "L", or "LA" when it names a transparent grey.
    PIL's own convert() clips every value above 255 instead of scaling, which turns all but black white.
    The high byte is kept, as PIL does for 16-bit colour PNGs."""
    if not img.mode.startswith("I"):
        return img
    values = np.clip(np.asarray(img.convert("I")), 0, 65535)
    grey = Image.fromarray((values >> 8).astype(np.uint8), "L")
    transparent = img.info.get("transparency")
    if not isinstance(transparent, int):
        return grey
    alpha = np.where(values == transparent, 0, 255).astype(np.uint8)
    return Image.merge("LA", (grey, Image.fromarray(alpha, "L")))


def encode_png(img: Image.Image, parameters: dict) -> bytes:
    """A PNG with its generation parameters in text chunks: `parameters` (the A1111 style line
    other tools read) and `showroom` (the same as JSON)."""
    info = PngImagePlugin.PngInfo()
    line = (f"{parameters.get('prompt', '')}\nNegative prompt: {parameters.get('negative_prompt', '')}\n"
            f"Steps: {parameters.get('steps')}, CFG scale: {parameters.get('guidance_scale')}, "
            f"Seed: {parameters.get('seed')}, Size: {img.width}x{img.height}, Model: {parameters.get('model')}")
    info.add_text("parameters", line)
    info.add_text("showroom", json.dumps(parameters, sort_keys=True))
    out = io.BytesIO()
    img.save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def read_png_parameters(data: bytes) -> dict:
    with Image.open(io.BytesIO(data)) as img:
        return json.loads(img.text.get("showroom", "{}"))
