"""What a training step sees of a photo: a random square view that holds the product, laid on a plain ground where
the photo is transparent, a little jittered; where the product is in it (its mask, cut alike), and, for SDXL,
where the view was cut from the photo."""

import random
from dataclasses import dataclass, replace

from PIL import Image, ImageEnhance, ImageOps

Box = tuple[int, int, int, int]  # (left, top, right, bottom) of the product, in the photo's pixels
MASK_BOX_TRIM = 0.005  # of a mask's mass left outside its box on each side (stray specks, not the product)


@dataclass(frozen=True)
class Photo:
    """A picture to learn from, its caption, and where the product lies in it (None: in the middle, as asked)."""
    image: Image.Image
    caption: str
    name: str = ""  # the file's name (a video frame: `clip.mp4#3`): what found masks are keyed by
    box: Box | None = None
    mask: Image.Image | None = None  # "L", the photo's size: 255 where the product is, 0 where it is not


@dataclass(frozen=True)
class View:
    """A training picture and where it came from: SDXL is told the photo's size and where the crop starts."""
    image: Image.Image
    original_size: tuple[int, int]  # (height, width) of the photo
    crop_top_left: tuple[int, int]  # (top, left) of the crop, in the photo scaled as the crop was scaled
    mask: Image.Image | None = None  # the product's mask, cut, scaled and mirrored as the picture was


def with_mask(photo: Photo, mask: Image.Image | None) -> Photo:
    """The photo with the product's mask found for it, and its box from the mask."""
    if mask is None:
        return photo
    if mask.size != photo.image.size:
        raise ValueError(f"the mask of {photo.name} is {mask.size}, its photo {photo.image.size}")
    box = mask_box(mask)
    return replace(photo, mask=mask, box=box) if box else photo


def mask_box(mask: Image.Image) -> Box | None:
    """The box of a product's mask without faint haze (as a cut-out is trimmed) and without the outermost
    MASK_BOX_TRIM of its mass on each side: a speck the remover left in a corner would stretch a plain bounding
    box over the whole photo, and views would no longer hold the product. None when it holds nothing."""
    import numpy as np

    from backend.place.cutout import TRIM_ALPHA

    levels = np.asarray(mask, dtype=np.float64)
    levels = np.where(levels > TRIM_ALPHA, levels, 0)
    total = levels.sum()
    if total == 0:
        return None

    def span(profile) -> tuple[int, int]:
        share = np.cumsum(profile) / total
        start = int(np.searchsorted(share, MASK_BOX_TRIM, side="right"))
        return start, max(start + 1, int(np.searchsorted(share, 1 - MASK_BOX_TRIM, side="left")) + 1)

    (left, right), (top, bottom) = span(levels.sum(axis=0)), span(levels.sum(axis=1))
    return left, top, right, bottom


def centred_offset(length: int, side: int, rng: random.Random) -> int:
    """Where a crop `side` long starts along a photo's side `length` long: anywhere the crop still holds the
    photo's centre (left <= length / 2 <= left + side). A product photo has its product in the middle, and every
    view is captioned with it; a 10:1 photo cropped anywhere showed any of it in about one view in ten. A crop
    spans at least 60 % of the short side, so along it (and on a square photo) every offset is still drawn."""
    return rng.randint(max(0, -((2 * side - length) // 2)), min(length - side, length // 2))


def holding_offset(length: int, side: int, start: int, end: int, rng: random.Random) -> int:
    """Where a crop `side` long starts along a photo's side `length` long so that it holds the product's extent
    [start, end) along it; a product longer than the crop (a wide one on a wide photo) has its middle held."""
    low, high = max(0, end - side), min(length - side, start)
    if low > high:
        middle = (start + end) // 2
        low, high = max(0, middle - side), min(length - side, middle)
    return rng.randint(low, high)


def crop_square(w: int, h: int, rng: random.Random, crop: bool, box: Box | None) -> tuple[int, int, int]:
    """(left, top, side) of a view's square: random (60-100 % of the short side) or the largest; holding the
    product's box where it is known (a random one never smaller than the product, as far as the photo allows:
    the whole product is in every view), else the photo's centre."""
    side = min(w, h)
    if not crop:
        if box is None:
            return (w - side) // 2, (h - side) // 2, side
        return (min(max(0, (box[0] + box[2] - side) // 2), w - side),
                min(max(0, (box[1] + box[3] - side) // 2), h - side), side)
    side = max(1, int(side * rng.uniform(0.6, 1.0)))  # a photo 1 px high still has a 1 px crop
    if box is None:
        return centred_offset(w, side, rng), centred_offset(h, side, rng), side
    side = max(side, min(w, h, max(box[2] - box[0], box[3] - box[1])))
    return holding_offset(w, side, box[0], box[2], rng), holding_offset(h, side, box[1], box[3], rng), side


def augment(image: Image.Image, size: int, rng: random.Random, crop: bool, flip: bool, jitter: float,
            box: Box | None = None, mask: Image.Image | None = None) -> View:
    """A random view: crop (60-100% of the short side, holding the product's box, or the photo's centre where it
    is not known), mirror, a little brightness/contrast/colour; the product's mask, if known, cut alike."""
    w, h = image.size
    left, top, side = crop_square(w, h, rng, crop, box)
    square = (left, top, left + side, top + side)
    picture = image.crop(square).resize((size, size), Image.BICUBIC)
    mask = mask.crop(square).resize((size, size), Image.BILINEAR) if mask is not None else None
    scale = size / side  # the crop's corner where the whole photo, scaled alike, would have it
    corner_top, corner_left = round(top * scale), round(left * scale)
    if flip and rng.random() < 0.5:
        picture = ImageOps.mirror(picture)
        mask = ImageOps.mirror(mask) if mask is not None else None
        corner_left = max(0, round(w * scale) - corner_left - size)  # the mirrored photo's crop starts there
    picture = on_random_ground(picture, rng)
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color) if jitter else ():
        picture = enhancer(picture).enhance(1 + rng.uniform(-jitter, jitter))
    return View(picture, (h, w), (corner_top, corner_left), mask)


def on_random_ground(picture: Image.Image, rng: random.Random) -> Image.Image:
    """A photo with transparency (a packshot, a cut-out) laid on a plain colour drawn for this view. Dropping
    the alpha would teach whatever lies under its transparent pixels (black, in a cut-out) as part of the
    product's look; a new colour each view teaches that the ground is not the product."""
    if picture.mode != "RGBA":
        return picture
    ground = Image.new("RGB", picture.size, tuple(rng.randrange(256) for _ in range(3)))
    ground.paste(picture, mask=picture.getchannel("A"))
    return ground
