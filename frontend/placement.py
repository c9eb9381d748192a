"""Place mode's choices, and the pictures that preview them: where the product sits, on which canvas.

Nothing here draws on the page. Where the product goes is decided by `backend.place.layout` (PIL only, so
the frontend imports it): the preview is the very product layer a `place` job lays out, shrunk, so it
cannot drift from what is generated.
"""

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image, ImageDraw, ImageOps

from backend.images import fit_photo
from backend.place.composite import finish
from backend.place.layout import Placement, fitted_size, place

MODES = {"place": "Place my product — it stays exactly as it is", "restyle": "Restyle my photo",
         "generate": "No photo"}
MODE_CAPTIONS = {"place": "The product is cut out of the photo and kept pixel for pixel; a scene is made around it.",
                 "restyle": "The whole photo is repainted by the prompt; you choose how much.",
                 "generate": "The scene, product included, comes from the prompt alone."}


@dataclass(frozen=True)
class Preset:
    label: str
    x: float
    y: float


# y sits a little below the middle by default: products stand on something, and the eye expects the ground low.
PRESETS = {"centre": Preset("Centre", 0.5, 0.55), "left": Preset("Left third", 0.33, 0.55),
           "right": Preset("Right third", 0.67, 0.55), "low": Preset("Low", 0.5, 0.68),
           "high": Preset("High", 0.5, 0.4)}
ASPECTS = {"1:1": (1, 1), "4:5": (4, 5), "3:4": (3, 4), "16:9": (16, 9), "9:16": (9, 16)}
MIN_SIDE, MAX_SIDE = 64, 2048  # the contract's width and height limits

CHECKER_LIGHT, CHECKER_DARK = (255, 255, 255), (226, 226, 234)
CANVAS_FILL, GUIDE = (238, 238, 243), (214, 214, 226)


def shape_help(native: int) -> str:
    """What the Shape presets are, in the same words on the Create and Catalog pages."""
    return f"The picture's proportions, width to height, at about the model's own {native} × {native} pixels."


def canvas_size(aspect: str, native: int) -> tuple[int, int]:
    """Width and height with the preset's aspect at about native × native pixels (as the backend sizes a
    photo's aspect), in multiples of 8 within 64..2048."""
    return _canvas(*ASPECTS[aspect], native)


def preset_for(width: int, height: int, native: int) -> str | None:
    """The Shape preset that gives exactly this size, or None (a custom size)."""
    return next((a for a in ASPECTS if canvas_size(a, native) == (width, height)), None)


def drawable(width, height) -> bool:
    """A size a preview can be drawn at: the contract's range (a size typed outside it is refused, not drawn)."""
    return all(isinstance(v, (int, float)) and MIN_SIDE <= v <= MAX_SIDE for v in (width, height))


def photo_canvas(photo: bytes, native: int) -> tuple[int, int] | None:
    """A canvas of the photo's own shape, as it stands upright (a phone's EXIF turn applied, as the backend
    applies it), sized as canvas_size sizes a preset; None when the photo cannot be read."""
    size = upright_size(photo)
    return _canvas(*size, native) if size and all(size) else None


def upright_size(photo: bytes) -> tuple[int, int] | None:
    """The photo's width and height as it stands upright (a phone's EXIF quarter turn applied), without decoding a
    JPEG's pixels; None when it cannot be read."""
    try:
        with Image.open(io.BytesIO(photo)) as img:
            return img.size[::-1] if img.getexif().get(ExifTags.Base.Orientation) in (5, 6, 7, 8) else img.size
    except Exception:  # unreadable: uploads.unreadable says so
        return None


def _canvas(across: float, down: float, native: int) -> tuple[int, int]:
    width = math.sqrt(native * native * across / down)
    height = width * down / across
    # grown or shrunk as a whole when a side leaves 64..2048, so the aspect holds where it can
    factor = min(max(MIN_SIDE / min(width, height), 1.0), MAX_SIDE / max(width, height))
    return _side(width * factor), _side(height * factor)


def _side(value: float) -> int:
    return max(MIN_SIDE, min(MAX_SIDE, round(value / 8) * 8))


def fills_the_photo(cutout_png: bytes, photo: bytes) -> bool:
    """True when the cut-out is the whole photo, background and all: nearly every pixel mostly opaque and the box within
    2 % of the photo's own size (the cut-out is trimmed to its product, and the photo stood upright first)."""
    with Image.open(io.BytesIO(cutout_png)) as img:
        size, alpha = img.size, np.asarray(img.convert("RGBA").getchannel("A"))
    whole = upright_size(photo)
    if whole is None:  # the backend read it; a photo this side cannot read is not worth a warning
        return False
    close = all(abs(a - b) <= 0.02 * b for a, b in zip(size, whole))
    return close and float((alpha >= 128).mean()) >= 0.98  # a soft mask's "mostly product" counts: 190 is no background


def on_checkerboard(cutout_png: bytes, side: int = 320, fill: float = 0.85) -> bytes:
    """The cut-out, fitted into a square checkerboard (so its transparency shows, and it sits beside the
    canvas preview at the same size), PNG."""
    with Image.open(io.BytesIO(cutout_png)) as img:
        cutout = img.convert("RGBA")
    size = fitted_size(cutout.size, side * fill, side * fill)
    cutout = cutout.convert("RGBa").resize(size, Image.Resampling.LANCZOS).convert("RGBA")
    board = checkerboard((side, side))
    board.alpha_composite(cutout, ((side - size[0]) // 2, (side - size[1]) // 2))
    return _png(board)


def canvas_preview(cutout_png: bytes, width: int, height: int, x: float, y: float, scale: float,
                   shadow: bool = False, reflection: float = 0.0, max_side: int = 320) -> bytes:
    """A small picture of the canvas with the product where the job will put it, with the contact shadow and floor
    reflection the job will draw (the backend's own finish on a plain scene), PNG."""
    with Image.open(io.BytesIO(cutout_png)) as img:
        cutout = img.convert("RGBA")
    layer = place(cutout, width, height, Placement(x, y, scale))  # full size: exactly the job's product layer
    scene = Image.new("RGB", (width, height), CANVAS_FILL)
    draw, line = ImageDraw.Draw(scene), max(1, round(max(width, height) / max_side))  # about 1 px once shrunk
    for third in (1, 2):  # the rule-of-thirds guides the position presets follow
        draw.line([(width * third / 3, 0), (width * third / 3, height)], fill=GUIDE, width=line)
        draw.line([(0, height * third / 3), (width, height * third / 3)], fill=GUIDE, width=line)
    canvas = finish(scene, layer, shadow=shadow, harmonize=False, reflection=reflection)
    shrink = max_side / max(width, height)
    return _png(canvas.resize((max(1, round(width * shrink)), max(1, round(height * shrink))),
                              Image.Resampling.LANCZOS))


def restyle_preview(photo: bytes, width: int, height: int, max_side: int = 320) -> tuple[bytes, bytes] | None:
    """The photo, small, and the part of it a restyle job repaints (the backend's own cover-and-centre crop, upright
    as the backend turns it), PNGs; None when this side cannot read the photo (the backend says why on Generate)."""
    try:
        with Image.open(io.BytesIO(photo)) as img:
            img.draft("RGB", (2 * max_side, 2 * max_side))  # a JPEG decoded at a fraction of its size: quick
            upright = ImageOps.exif_transpose(img)
            upright.thumbnail((4 * max_side, 4 * max_side))  # enough for the crop below, whatever the photo's size
            shrink = max_side / max(width, height)
            crop = fit_photo(upright, max(1, round(width * shrink)), max(1, round(height * shrink)))
            upright.thumbnail((max_side, max_side))
            return _png(fit_photo(upright, *upright.size)), _png(crop)  # transparency on white, as the job has it
    except Exception:  # a photo the backend refuses is explained there, not here
        return None


def checkerboard(size: tuple[int, int], tile: int = 8) -> Image.Image:
    board = Image.new("RGBA", size, (*CHECKER_LIGHT, 255))
    draw = ImageDraw.Draw(board)
    for top in range(0, size[1], tile):
        for left in range((top // tile) % 2 * tile, size[0], 2 * tile):
            draw.rectangle((left, top, left + tile - 1, top + tile - 1), fill=(*CHECKER_DARK, 255))
    return board


def _png(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()
