"""finish(): the contract's exact-pixel promise, the contact shadow, the light wrap and the reflection."""

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from backend.place.composite import finish, masked_mean
from backend.place.layout import Placement, place

SIZE = 256


@pytest.fixture(scope="module")
def layer() -> Image.Image:
    """A red, textured product with soft edges, placed low on the canvas like a product on a table."""
    noise = np.random.default_rng(3).integers(0, 60, (160, 120, 3))
    product = Image.fromarray((noise + (170, 20, 10)).astype(np.uint8), "RGB")
    alpha = Image.new("L", product.size, 0)
    ImageDraw.Draw(alpha).rounded_rectangle((6, 6, 113, 153), radius=20, fill=255)
    alpha = alpha.filter(ImageFilter.GaussianBlur(1.5)).point(lambda v: 255 if v > 250 else v)
    product.putalpha(alpha)
    return place(product, SIZE, SIZE, Placement(x=0.5, y=0.55, scale=0.6))


@pytest.fixture(scope="module")
def scene() -> Image.Image:
    """A generated scene: bluish noise, so any change to it shows."""
    noise = np.random.default_rng(7).integers(0, 60, (SIZE, SIZE, 3))
    return Image.fromarray((noise + (60, 110, 180)).astype(np.uint8), "RGB")


def parts(layer: Image.Image):
    pixels = np.asarray(layer)
    alpha = pixels[..., 3]
    return pixels[..., :3], alpha == 255, (alpha > 0) & (alpha < 255), alpha == 0


def base_row(layer: Image.Image) -> int:
    """The row just under the product's mostly opaque part."""
    return layer.getchannel("A").point(lambda v: 255 if v >= 128 else 0).getbbox()[3]


@pytest.mark.parametrize("shadow", [True, False])
@pytest.mark.parametrize("harmonize", [True, False])
@pytest.mark.parametrize("reflection", [0.0, 0.7])
def test_finish_keeps_every_opaque_pixel_exactly(layer, scene, shadow, harmonize, reflection):
    out = finish(scene, layer, shadow=shadow, harmonize=harmonize, reflection=reflection)
    colour, opaque, _, _ = parts(layer)
    assert (out.mode, out.size) == ("RGB", layer.size)
    assert opaque.sum() > 5000
    assert np.array_equal(np.asarray(out)[opaque], colour[opaque])


def test_finish_plain_leaves_the_scene_and_blends_the_edge(layer, scene):
    out = np.asarray(finish(scene, layer, shadow=False, harmonize=False)).astype(int)
    colour, _, edge, clear = parts(layer)
    generated = np.asarray(scene).astype(int)
    assert np.array_equal(out[clear], generated[clear])
    weight = np.asarray(layer)[..., 3][edge, None] / 255
    expected = weight * colour[edge] + (1 - weight) * generated[edge]
    assert edge.sum() > 100 and np.abs(out[edge] - expected).max() <= 1


def test_finish_shadow_darkens_the_ground_under_the_product(layer, scene):
    plain = np.asarray(finish(scene, layer, shadow=False, harmonize=False)).astype(int)
    shaded = np.asarray(finish(scene, layer, shadow=True, harmonize=False)).astype(int)
    bottom = base_row(layer)
    left, _, right, _ = layer.getchannel("A").getbbox()
    below = np.s_[bottom:bottom + 4, left + 10:right - 10]
    assert (plain[below] - shaded[below]).mean() > 15
    assert np.all(shaded <= plain)


def test_finish_shadow_spares_what_is_above_the_base(layer, scene):
    plain = np.asarray(finish(scene, layer, shadow=False, harmonize=False)).astype(int)
    shaded = np.asarray(finish(scene, layer, shadow=True, harmonize=False)).astype(int)
    bottom = base_row(layer)
    assert np.array_equal(shaded[:bottom - 8], plain[:bottom - 8])  # the fade reaches 6% of the width up
    above = (plain[bottom - 3:bottom] - shaded[bottom - 3:bottom]).mean()
    below = (plain[bottom:bottom + 3] - shaded[bottom:bottom + 3]).mean()
    assert above < below / 2


def test_finish_harmonize_pulls_only_the_edge_toward_the_scene(layer, scene):
    plain = np.asarray(finish(scene, layer, shadow=False, harmonize=False)).astype(int)
    wrapped = np.asarray(finish(scene, layer, shadow=False, harmonize=True)).astype(int)
    _, opaque, edge, clear = parts(layer)
    assert np.array_equal(wrapped[clear | opaque], plain[clear | opaque])
    # The scene is blue and the product red: the wrapped edge is bluer and less red than the plain blend.
    assert (wrapped[edge, 2] - plain[edge, 2]).mean() > 3
    assert (wrapped[edge, 0] - plain[edge, 0]).mean() < -3


def test_finish_empty_layer_returns_the_scene(scene):
    empty = Image.new("RGBA", scene.size, (0, 0, 0, 0))
    assert np.array_equal(np.asarray(finish(scene, empty)), np.asarray(scene))


def test_finish_refuses_sizes_that_differ(layer):
    with pytest.raises(ValueError, match=r"generated image is \(128, 128\) but the layer is \(256, 256\)"):
        finish(Image.new("RGB", (128, 128)), layer)


def test_finish_refuses_a_layer_without_alpha(scene):
    with pytest.raises(ValueError, match="layer must be an RGBA image, got mode RGB"):
        finish(scene, scene)


@pytest.mark.parametrize("radius", [2.0, 12.0])
def test_masked_mean_follows_a_ramp_and_ignores_unweighted_pixels(radius):
    ramp = np.tile(np.arange(200, dtype=np.uint8)[None, :, None], (60, 1, 3))
    weight = np.full((60, 200), 255, dtype=np.uint8)
    weight[:, 100:] = 0  # the right half must not count...
    ramp[:, 100:] = 255  # ...so its white must not leak into the means
    where = np.zeros((60, 200), dtype=bool)
    where[20:40, 40:80] = True
    mean, coverage = masked_mean(ramp, weight, radius, where)
    expected = np.tile(np.arange(40, 80), 20)
    assert np.abs(mean[:, 0] - expected).max() <= 2
    assert np.all(coverage > 0.9)  # a Gaussian of radius 12 reaches past the weighted half a little


def two_tone_layer(bottom: float = 0.55) -> Image.Image:
    """An opaque product, blue with a red foot (its lowest tenth), placed on a grey floor's canvas."""
    product = Image.new("RGBA", (60, 100), (20, 40, 220, 255))
    product.paste((220, 30, 20, 255), (0, 90, 60, 100))
    return place(product, SIZE, SIZE, Placement(x=0.5, y=bottom, scale=0.5))


GREY = (128, 128, 128)


def test_finish_reflection_mirrors_the_product_below_its_base_and_fades_out():
    """On a glossy floor the product shows upside down under its base: its foot first (red), then its body (blue),
    weaker with depth, gone REFLECTION_LENGTH of its height below; nothing above the base changes."""
    layer = two_tone_layer()
    scene = Image.new("RGB", (SIZE, SIZE), GREY)
    out = np.asarray(finish(scene, layer, shadow=False, harmonize=False, reflection=0.6)).astype(int)
    box = layer.getchannel("A").getbbox()
    height, middle, base = box[3] - box[1], (box[0] + box[2]) // 2, box[3]
    just_below, deeper = out[base, middle], out[base + round(0.15 * height), middle]
    assert just_below[0] > 128 + 40 and just_below[2] < 128 - 40, f"the red foot first: {just_below}"
    assert deeper[2] > deeper[0] + 10, f"then the blue body: {deeper}"
    column = np.abs(out[base:base + round(0.4 * height), middle] - GREY).sum(axis=1)
    assert np.all(np.diff(column[round(0.15 * height):]) <= 1), "it fades with depth"
    assert np.array_equal(out[base + round(0.4 * height) + 1:], np.full_like(out[base + round(0.4 * height) + 1:], 128))
    assert np.array_equal(out[:box[1]], np.full_like(out[:box[1]], 128)), "above the product: the scene as it was"
    assert np.array_equal(out[:, :box[0] - 3], np.full_like(out[:, :box[0] - 3], 128)), "beside it too"


def test_finish_reflection_is_weaker_when_asked_and_absent_at_zero(layer, scene):
    grey = Image.new("RGB", (SIZE, SIZE), GREY)
    two = two_tone_layer()
    base, middle = two.getchannel("A").getbbox()[3], SIZE // 2
    strong, weak = (np.asarray(finish(grey, two, False, False, r)).astype(int)[base, middle] for r in (0.8, 0.2))
    assert abs(strong[0] - 128) > 3 * abs(weak[0] - 128) > 0
    assert np.array_equal(np.asarray(finish(scene, layer, True, True, 0.0)), np.asarray(finish(scene, layer))), \
        "0 draws none: a job without it is made as before"
    with pytest.raises(ValueError, match="reflection must be between 0 and 1, got 1.5"):
        finish(scene, layer, reflection=1.5)


def test_finish_reflection_of_a_product_on_the_lower_edge_is_out_of_the_picture():
    product = Image.new("RGBA", (60, 100), (20, 40, 220, 255))
    layer = Image.new("RGBA", (SIZE, SIZE), (0, 0, 0, 0))
    layer.paste(product, (100, SIZE - 100))
    out = finish(Image.new("RGB", (SIZE, SIZE), GREY), layer, shadow=False, harmonize=False, reflection=1.0)
    assert np.array_equal(np.asarray(out)[:SIZE - 100], np.full((SIZE - 100, SIZE, 3), 128))
