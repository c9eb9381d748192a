"""Placement geometry, premultiplied resizing, the inpainting mask and the starting canvas."""

import math

import numpy as np
import pytest
from PIL import Image

from backend.place.layout import Placement, init_canvas, inpaint_mask, place


def solid(width: int, height: int, colour=(200, 30, 40)) -> Image.Image:
    return Image.new("RGBA", (width, height), (*colour, 255))


def box_of(layer: Image.Image) -> tuple[int, int, int, int]:
    return layer.getchannel("A").getbbox()


def test_placement_defaults_follow_the_contract():
    assert Placement() == Placement(x=0.5, y=0.55, scale=0.6)


@pytest.mark.parametrize(("field", "value"), [("x", -0.1), ("x", 1.5), ("y", 2.0), ("scale", 0.01),
                                              ("scale", 1.2), ("scale", math.nan)])
def test_placement_refuses_values_out_of_range(field, value):
    with pytest.raises(ValueError, match=f"placement {field} must be between .* got {value!r}"):
        Placement(**{field: value})


def test_place_wide_cutout_fills_the_box_width_centred():
    layer = place(solid(80, 40), 400, 400, Placement(x=0.5, y=0.55, scale=0.5))
    assert (layer.mode, layer.size) == ("RGBA", (400, 400))
    assert box_of(layer) == (100, 170, 300, 270)  # 200×100 centred on (200, 220)


def test_place_tall_cutout_fills_the_box_height_centred():
    layer = place(solid(40, 80), 400, 400, Placement(x=0.5, y=0.55, scale=0.5))
    assert box_of(layer) == (150, 120, 250, 320)  # 100×200 centred on (200, 220)


def test_place_on_a_wide_canvas_fits_the_smaller_side():
    layer = place(solid(50, 50), 600, 300, Placement(x=0.25, y=0.5, scale=0.5))
    assert box_of(layer) == (75, 75, 225, 225)  # 150×150 (box 300×150) centred on (150, 150)


def test_place_keeps_the_opaque_product_opaque():
    alpha = np.asarray(place(solid(80, 40), 400, 400, Placement(scale=0.5)).getchannel("A"))
    assert np.all(alpha[170:270, 100:300] == 255) and np.count_nonzero(alpha) == 200 * 100


@pytest.mark.parametrize(("x", "y", "expected"), [(0.0, 0.0, (0, 0, 50, 25)), (1.0, 1.0, (150, 175, 200, 200))])
def test_place_clips_at_the_canvas_edges(x, y, expected):
    layer = place(solid(80, 40), 200, 200, Placement(x=x, y=y, scale=0.5))
    assert layer.size == (200, 200)
    assert box_of(layer) == expected  # a quarter of the 100×50 product shows


def test_place_at_native_size_copies_the_cutout_exactly():
    cutout = Image.effect_noise((60, 30), 50).convert("RGB").convert("RGBA")
    layer = place(cutout, 100, 100, Placement(x=0.5, y=0.5, scale=0.6))  # box 60×60: no resize needed
    assert np.array_equal(np.asarray(layer.crop((20, 35, 80, 65))), np.asarray(cutout))


def test_place_resizes_without_fringes_from_hidden_colour():
    cutout = Image.new("RGBA", (30, 30), (0, 255, 0, 0))  # green hidden under the transparent border
    cutout.paste((255, 0, 0, 255), (5, 5, 25, 25))
    layer = np.asarray(place(cutout, 100, 100, Placement(scale=0.13)))
    edge = (layer[..., 3] >= 32) & (layer[..., 3] < 255)
    assert edge.any()
    assert np.all(layer[edge, 0] >= 240) and np.all(layer[edge, 1] <= 15)


def test_place_refuses_a_cutout_that_is_not_rgba():
    with pytest.raises(ValueError, match="cutout must be an RGBA image, got mode RGB"):
        place(Image.new("RGB", (10, 10)), 64, 64, Placement())


def layer_with_every_alpha() -> Image.Image:
    alpha = np.arange(256, dtype=np.uint8).reshape(16, 16)
    rgb = np.full((16, 16, 3), (10, 200, 90), dtype=np.uint8)
    return Image.fromarray(np.dstack([rgb, alpha]), "RGBA")


def test_inpaint_mask_keeps_only_what_is_opaque():
    layer = layer_with_every_alpha()
    mask = inpaint_mask(layer)
    assert (mask.mode, mask.size) == ("L", layer.size)
    alpha, levels = np.asarray(layer)[..., 3], np.asarray(mask)
    assert set(np.unique(levels)) <= {0, 255}
    assert np.all(levels[alpha < 255] == 255)


def kept_cells(mask: np.ndarray) -> np.ndarray:
    """The pixels diffusers' inpainting keeps from the starting canvas: it shrinks the mask to the latents
    with nearest sampling (the top left pixel of each 8×8 cell) and keeps the latents where that is 0."""
    kept = mask[::8, ::8] == 0
    return np.kron(kept, np.ones((8, 8), bool))[:mask.shape[0], :mask.shape[1]]


@pytest.mark.parametrize("box", [(103, 225, 410, 339), (8, 8, 24, 24), (0, 0, 13, 70), (50, 1, 64, 64)])
def test_inpaint_mask_keeps_no_scene_pixel_in_a_latent_cell(box):
    """A latent cell is kept whole or generated whole: one kept for its opaque corner would show the starting
    canvas's grey fill in the scene pixels beside the product (a grey rim along its bottom and right edges)."""
    left, top, right, bottom = box
    layer = Image.new("RGBA", (512, 72), (0, 0, 0, 0))
    layer.paste((200, 30, 40, 255), (left, top, right, min(bottom, 72)))
    mask = np.asarray(inpaint_mask(layer))
    alpha = np.asarray(layer)[..., 3]
    assert not np.any(kept_cells(mask) & (alpha < 255)), "scene pixels in a cell kept from the starting canvas"
    cells = mask.reshape(9, 8, 64, 8)
    assert np.all(cells.min(axis=(1, 3)) == cells.max(axis=(1, 3))), "one value per cell, however it is sampled"
    assert np.array_equal(kept_cells(mask), mask == 0)
    whole = alpha.reshape(9, 8, 64, 8).min(axis=(1, 3)) == 255
    assert np.array_equal(mask[::8, ::8] == 0, whole), "every cell that is opaque throughout is kept"


def test_inpaint_mask_on_a_canvas_that_is_not_whole_cells():
    layer = Image.new("RGBA", (21, 13), (9, 9, 9, 255))
    layer.putpixel((20, 12), (9, 9, 9, 0))
    levels = np.asarray(inpaint_mask(layer))
    assert levels.shape == (13, 21)
    assert np.all(levels[:8, :16] == 0) and np.all(levels[8:, 16:] == 255)
    assert np.all(levels[:8, 16:] == 0) and np.all(levels[8:, :16] == 0)


def test_init_canvas_shows_the_product_over_the_fill():
    layer = layer_with_every_alpha()
    canvas = np.asarray(init_canvas(layer, fill=(127, 127, 127)))
    alpha = np.asarray(layer)[..., 3]
    assert canvas.shape == (16, 16, 3)
    assert np.array_equal(canvas[alpha == 255], np.asarray(layer)[..., :3][alpha == 255])
    assert tuple(canvas[alpha == 0][0]) == (127, 127, 127)
    assert abs(int(canvas[8, 0, 1]) - (127 + 128 * (200 - 127) / 255)) <= 1  # alpha 128: halfway
