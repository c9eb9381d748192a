"""Placing a cut-out on the canvas, and the mask and starting image the inpainting works from."""

import math
from dataclasses import dataclass

from PIL import Image

NEUTRAL_FILL = (127, 127, 127)
_SCENE_WHERE_NOT_OPAQUE = [255] * 255 + [0]  # lookup table: alpha 0..254 -> 255, alpha 255 -> 0
# One latent pixel covers this many image pixels each way: the VAE's scale factor of SD 1.x, 2.x and SDXL
# (a model whose factor divides it, such as the tests' tiny one, is served as well).
LATENT_CELL = 8


@dataclass(frozen=True)
class Placement:
    """Where the product goes: its box centred at (x·width, y·height), fitted into scale·width × scale·height."""

    x: float = 0.5
    y: float = 0.55
    scale: float = 0.6

    def __post_init__(self):
        for name, value, low in (("x", self.x, 0.0), ("y", self.y, 0.0), ("scale", self.scale, 0.05)):
            if not low <= value <= 1.0:  # also refuses NaN
                raise ValueError(f"placement {name} must be between {low} and 1, got {value!r}")


def place(cutout: Image.Image, width: int, height: int, placement: Placement) -> Image.Image:
    """The product layer: a transparent width × height canvas with the cut-out fitted and centred on it."""
    _check_rgba(cutout, "cutout")
    if width < 1 or height < 1:
        raise ValueError(f"the canvas must be at least 1×1, got {width}×{height}")
    size = fitted_size(cutout.size, placement.scale * width, placement.scale * height)
    left = _nearest(placement.x * width - size[0] / 2)
    top = _nearest(placement.y * height - size[1] / 2)
    layer = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    layer.paste(_resize(cutout, size), (left, top))  # paste clips whatever falls outside the canvas
    return layer


def fitted_size(size: tuple[int, int], box_width: float, box_height: float) -> tuple[int, int]:
    """The largest size with the same aspect as `size` that fits in box_width × box_height."""
    factor = min(box_width / size[0], box_height / size[1])
    return max(1, _nearest(size[0] * factor)), max(1, _nearest(size[1] * factor))


def _nearest(value: float) -> int:
    return math.floor(value + 0.5)  # halves always up: round() would send 20.5 and 21.5 both to even


def _resize(cutout: Image.Image, size: tuple[int, int]) -> Image.Image:
    if cutout.size == size:
        return cutout
    # Resampling straight RGBA would mix the colour hidden under transparent pixels into the edge
    # (dark or white fringes); premultiplied colour carries no weight where alpha is 0.
    return cutout.convert("RGBa").resize(size, Image.Resampling.LANCZOS).convert("RGBA")


def inpaint_mask(layer: Image.Image) -> Image.Image:
    """The inpainting mask ("L"): 0 on each latent cell the product covers opaquely throughout, 255 elsewhere.

    Diffusers shrinks the mask to the latents by nearest sampling and keeps a cell's latents from the
    starting canvas wherever the sampled pixel is 0: a cell kept for its opaque corner would show the
    canvas's grey fill in the scene pixels beside the product. Whole cells are generated instead; the
    product pixels in them come back exactly in the finish.
    """
    _check_rgba(layer, "layer")
    scene = layer.getchannel("A").point(_SCENE_WHERE_NOT_OPAQUE)
    # Any scene pixel in a cell makes its mean above 0 (a partial cell at the edge is averaged on its own).
    cells = scene.reduce(LATENT_CELL).point(lambda v: 255 if v else 0)
    grown = cells.resize((cells.width * LATENT_CELL, cells.height * LATENT_CELL), Image.Resampling.NEAREST)
    return grown.crop((0, 0, *layer.size))


def init_canvas(layer: Image.Image, fill: tuple[int, int, int] = NEUTRAL_FILL) -> Image.Image:
    """The inpainting's starting image (RGB): the product over a neutral fill."""
    _check_rgba(layer, "layer")
    background = Image.new("RGBA", layer.size, (*fill, 255))
    return Image.alpha_composite(background, layer).convert("RGB")


def _check_rgba(img: Image.Image, name: str) -> None:
    if img.mode != "RGBA":
        raise ValueError(f"{name} must be an RGBA image, got mode {img.mode}")
