"""Finishing a generated scene: the product put back pixel for pixel, with a contact shadow, a light wrap and, on
a glossy floor, its reflection."""

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter


@dataclass(frozen=True)
class _ShadowPass:
    height: float    # of the shadow band, as a share of the product's width
    blur: float      # Gaussian radius, as a share of the product's width
    strength: float  # how much of the scene's light the core of the shadow takes away


# A tight dark shadow where the product touches the ground and a wide faint one around it. Sizes follow
# the product's width, so a small product casts a small shadow; strengths stay fixed.
_SHADOW_PASSES = (_ShadowPass(height=0.04, blur=0.015, strength=0.5),
                  _ShadowPass(height=0.15, blur=0.06, strength=0.3))
FOOTPRINT_BAND = 0.08  # bottom share of the product's height taken as the part that stands on the ground
WRAP_STRENGTH = 0.6    # how far a fully see-through edge pixel's colour moves toward the scene around it
WRAP_RADIUS = 0.02     # of the product's larger side: the neighbourhood whose colour the edge takes on
SOLID_ALPHA = 128      # the product's box, for sizes and the base line, counts pixels at least this opaque
REFLECTION_LENGTH = 0.4  # of the product's height: how far below its base its reflection fades out
REFLECTION_BLUR = 0.004  # of the product's width: a glossy floor is not quite a mirror


def finish(generated: Image.Image, layer: Image.Image, shadow: bool = True, harmonize: bool = True,
           reflection: float = 0.0) -> Image.Image:
    """The final image: the scene (with an optional reflection and shadow), the layer's edges blended in, its opaque
    pixels exact. `reflection` (0..1) is how strong the product's mirror image is at its base; 0 draws none."""
    if not 0 <= reflection <= 1:
        raise ValueError(f"reflection must be between 0 and 1, got {reflection}")
    if layer.mode != "RGBA":
        raise ValueError(f"layer must be an RGBA image, got mode {layer.mode}")
    if generated.size != layer.size:
        raise ValueError(f"the generated image is {generated.size} but the layer is {layer.size}")
    out = np.array(generated.convert("RGB"))
    product = np.asarray(layer)
    alpha = product[..., 3]
    solid, outer = _box(alpha >= SOLID_ALPHA), _box(alpha > 0)
    if outer is None:
        return Image.fromarray(out, "RGB")
    if reflection and solid is not None:
        _reflect(out, product, solid, outer, reflection)
    if shadow and solid is not None:
        _cast_shadow(out, alpha, solid)
    # Only the product's box (and, for the wrap, the scene around it) is touched, so the cost follows the
    # product's size rather than the canvas's.
    radius = _wrap_radius(solid) if harmonize and solid is not None else 0.0
    window = _window(outer, math.ceil(3 * radius), alpha.shape)
    _put_product(out[window], product[window], radius)
    return Image.fromarray(out, "RGB")


def _put_product(scene: np.ndarray, product: np.ndarray, wrap_radius: float) -> None:
    """Blend the layer's see-through edge into the scene (in place) and set its opaque pixels exactly."""
    alpha = product[..., 3]
    edge = (alpha > 0) & (alpha < 255)
    if edge.any():
        colour = product[..., :3][edge].astype(np.float32)
        see_through = (255 - alpha[edge]).astype(np.float32)[:, None] / 255
        if wrap_radius > 0:
            # Light wrap: the more of the scene shows through an edge pixel, the more it takes the
            # scene's local colour, so the product sits in the scene's light instead of looking pasted.
            local, _ = masked_mean(scene, 255 - alpha, wrap_radius, edge)
            colour += WRAP_STRENGTH * see_through * (local - colour)
        blended = (1 - see_through) * colour + see_through * scene[edge]
        scene[edge] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
    # The contract's promise, made literally true whatever came before: opaque product pixels are the layer's.
    np.copyto(scene, product[..., :3], where=(alpha == 255)[..., None])


def _box(where: np.ndarray) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom) of the True pixels, right and bottom exclusive; None when there are none."""
    rows, cols = np.flatnonzero(where.any(axis=1)), np.flatnonzero(where.any(axis=0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _window(box: tuple[int, int, int, int], pad: int, shape: tuple[int, ...]) -> tuple[slice, slice]:
    """The box grown by `pad` on every side, clipped to the canvas, as array slices."""
    left, top, right, bottom = box
    return slice(max(0, top - pad), min(shape[0], bottom + pad)), slice(max(0, left - pad), min(shape[1], right + pad))


def _wrap_radius(solid: tuple[int, int, int, int]) -> float:
    left, top, right, bottom = solid
    return max(2.0, WRAP_RADIUS * max(right - left, bottom - top))


def _reflect(scene: np.ndarray, product: np.ndarray, solid, outer, strength: float) -> None:
    """Draw (in place) the product mirrored about its base line, as a glossy floor shows it: `strength` opaque at the
    base, fading to nothing REFLECTION_LENGTH of its height below, a little blurred."""
    _, top, _, bottom = solid
    length = min(max(1, round(REFLECTION_LENGTH * (bottom - top))), scene.shape[0] - bottom, bottom)
    if length <= 0:  # the product stands on the canvas's lower edge: its reflection is out of the picture
        return
    radius = max(0.5, REFLECTION_BLUR * (solid[2] - solid[0]))
    cols = slice(max(0, outer[0] - math.ceil(3 * radius)), min(scene.shape[1], outer[2] + math.ceil(3 * radius)))
    mirrored = product[bottom - length:bottom, cols][::-1]  # row `bottom + d` shows row `bottom - 1 - d`
    alpha = mirrored[..., 3].astype(np.float32) / 255
    # blurred with its alpha premultiplied, so the transparent pixels' hidden colour never bleeds in
    colour = _smooth(Image.fromarray(np.uint8(mirrored[..., :3] * alpha[..., None] + 0.5), "RGB"), radius)
    cover = np.asarray(_smooth(Image.fromarray(np.uint8(alpha * 255 + 0.5), "L"), radius), dtype=np.float32) / 255
    colour = np.asarray(colour, dtype=np.float32) / np.maximum(cover, 1 / 255)[..., None]
    fade = strength * (1 - (np.arange(length, dtype=np.float32) + 0.5) / length) ** 2  # quick at first, then slow
    weight = (cover * fade[:, None])[..., None]
    region = scene[bottom:bottom + length, cols]
    region[:] = np.clip(region * (1 - weight) + colour * weight + 0.5, 0, 255).astype(np.uint8)


def _cast_shadow(scene: np.ndarray, alpha: np.ndarray, solid: tuple[int, int, int, int]) -> None:
    """Darken the scene (in place) under the product's base: a contact shadow cast by its footprint."""
    left, top, right, bottom = solid
    band = max(1, round(FOOTPRINT_BAND * (bottom - top)))
    footprint = Image.fromarray(alpha[bottom - band:bottom, left:right])
    for shadow in _SHADOW_PASSES:
        window, darkness = _shadow_band(footprint, solid, alpha.shape, shadow)
        keep = 1 - shadow.strength * darkness[..., None]
        scene[window] = np.clip(scene[window] * keep + 0.5, 0, 255).astype(np.uint8)


def _shadow_band(footprint: Image.Image, solid, shape, shadow: _ShadowPass):
    """The footprint squashed into a band centred on the base line, blurred, and faded out above the base."""
    left, _, right, bottom = solid
    width = right - left
    height = max(1, round(shadow.height * width))
    radius = max(1.0, shadow.blur * width)
    band_top = bottom - height // 2
    rows, cols = _window((left, band_top, right, band_top + height), math.ceil(3 * radius), shape)
    canvas = Image.new("L", (cols.stop - cols.start, rows.stop - rows.start), 0)
    squashed = footprint.resize((width, height), Image.Resampling.BILINEAR)
    canvas.paste(squashed, (left - cols.start, band_top - rows.start))
    darkness = np.asarray(canvas.filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32) / 255
    # The ground just behind the base shows above it (beside rounded corners); anything higher is the
    # product's side or the wall behind it, which a contact shadow must not darken: the band's upper half
    # fades from full at the base to nothing at its top.
    rise = max(1, height // 2)
    fade = np.clip((np.arange(rows.start, rows.stop) - (bottom - rise)) / rise, 0, 1).astype(np.float32)
    return (rows, cols), darkness * fade[:, None]


def masked_mean(rgb: np.ndarray, weight: np.ndarray, radius: float, where: np.ndarray):
    """The Gaussian-weighted mean colour around each pixel picked by `where`, counting every pixel of `rgb`
    by its `weight` (uint8, 255 = fully), and how much weight each mean rests on (0..1; 0 = none near).
    Both come back as flat arrays in `where`'s order."""
    weighted = ((rgb.astype(np.uint16) * weight[..., None] + 127) // 255).astype(np.uint8)
    numerator = np.asarray(_smooth(Image.fromarray(weighted, "RGB"), radius))[where].astype(np.float32)
    coverage = np.asarray(_smooth(Image.fromarray(weight, "L"), radius))[where].astype(np.float32) / 255
    return numerator / np.maximum(coverage, 1 / 255)[:, None], coverage


def _smooth(img: Image.Image, radius: float) -> Image.Image:
    """A Gaussian blur; a wide one runs on an image shrunk by up to radius/4 (the result is smooth at that
    scale anyway) and is brought back to size, which keeps it cheap on large images."""
    factor = max(1, int(radius / 4))
    if factor == 1:
        return img.filter(ImageFilter.GaussianBlur(radius))
    small = img.reduce(factor).filter(ImageFilter.GaussianBlur(radius / factor))
    return small.resize(img.size, Image.Resampling.BILINEAR)
