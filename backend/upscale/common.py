"""What both upscaling engines share: the error they raise, the interface they offer, and the check
that a result is exactly 4x its source."""

import io
from typing import Protocol

from PIL import Image

SCALE = 4
# Models pad their input up to a multiple of their window (8 px for Swin2SR, 16 for HAT) and may leave the
# padding's share in their output. More than this many source pixels of extra is another scale, not padding:
# cropping it to 4x would keep only a corner of the picture.
MAX_PAD_PX = 32


class UpscaleError(Exception):
    """An upscale that produced no result; the message says why, in words fit for the manifest."""


class Upscaler(Protocol):
    name: str

    def upscale(self, png: bytes, source_url: str | None = None) -> bytes:
        """PNG bytes exactly 4x `png` in each side. `source_url`: the same image, fetchable by URL."""
        ...


def image_size(data: bytes, what: str) -> tuple[int, int]:
    try:
        return Image.open(io.BytesIO(data)).size
    except Exception as exc:  # PIL raises several kinds for bytes that are not an image
        raise UpscaleError(f"{what} is not a readable image ({exc})") from exc


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def fit_4x(source: bytes, result: bytes, what: str = "the upscaled image") -> bytes:
    """`result` as PNG bytes cropped to exactly 4x `source` (models pad their input to a multiple of
    their window); UpscaleError if it is smaller than that, larger than padding explains, or not a complete image."""
    width, height = image_size(source, "the source image")
    try:
        image = Image.open(io.BytesIO(result))
        if image.size == (width * SCALE, height * SCALE) and image.format == "PNG":
            image.verify()  # checks every chunk's CRC without decoding: a truncated file fails here
            return result
        image.load()
    except Exception as exc:
        raise UpscaleError(f"{what} is not a complete image ({exc})") from exc
    if image.width < width * SCALE or image.height < height * SCALE:
        raise UpscaleError(f"{what} is {image.width}x{image.height}, smaller than 4x the "
                           f"{width}x{height} source ({width * SCALE}x{height * SCALE})")
    if image.width > (width + MAX_PAD_PX) * SCALE or image.height > (height + MAX_PAD_PX) * SCALE:
        raise UpscaleError(f"{what} is {image.width}x{image.height}, larger than 4x the {width}x{height} source "
                           f"({width * SCALE}x{height * SCALE}) by more than padding explains: is the model a 4x one?")
    return encode_png(image.crop((0, 0, width * SCALE, height * SCALE)))

