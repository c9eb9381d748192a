"""What the pipeline is handed: a restyled photo is never stretched; place mode's mask and canvas."""

import numpy as np
from PIL import Image

from backend.gpu.pipeline import place_inputs
from backend.images import fit_photo


def test_fit_photo_covers_and_crops_the_centre_of_a_wide_photo():
    photo = Image.new("RGB", (200, 100), (255, 0, 0))
    photo.paste((0, 0, 255), (50, 0, 150, 100))  # a blue square in the middle
    out = np.asarray(fit_photo(photo, 64, 64))
    assert out.shape == (64, 64, 3)
    assert (out[:, 8:56, 2] > 200).all(), "the centre square fills the frame, not squashed to half its width"


def test_fit_photo_lays_transparency_on_white():
    photo = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    assert np.asarray(fit_photo(photo, 16, 16)).min() == 255


def test_place_inputs_mask_the_scene_and_keep_the_product():
    layer = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    layer.paste((10, 20, 30, 255), (8, 8, 24, 24))
    inputs = place_inputs(layer, n=3)
    assert inputs["strength"] == 1.0 and len(inputs["image"]) == len(inputs["mask_image"]) == 3
    mask, canvas = np.asarray(inputs["mask_image"][0]), np.asarray(inputs["image"][0])
    assert (mask[8:24, 8:24] == 0).all() and mask.sum() == 255 * (32 * 32 - 16 * 16)
    assert tuple(canvas[10, 10]) == (10, 20, 30) and tuple(canvas[0, 0]) == (127, 127, 127)
