"""Cut-outs from photos with transparency and through a background remover (fakes here; rembg in test_remover)."""

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from backend.images import has_transparency
from backend.place.cutout import NothingFound, cut_out


def packshot(size=(200, 160), box=(50, 40, 129, 99), haze: int = 0) -> Image.Image:
    """A transparent PNG: an opaque orange rectangle with a one-pixel soft rim, optional faint haze around."""
    img = Image.new("RGBA", size, (0, 0, 0, haze))
    draw = ImageDraw.Draw(img)
    left, top, right, bottom = box
    draw.rectangle((left - 1, top - 1, right + 1, bottom + 1), fill=(230, 120, 20, 100))
    draw.rectangle(box, fill=(240, 130, 30, 255))
    return img


def never_called(rgb):
    raise AssertionError("the remover must not run on a photo with transparency")


def mask_of(levels: np.ndarray):
    """A fake remover that answers a fixed mask."""
    return lambda rgb: Image.fromarray(levels.astype(np.uint8), "L")


def test_has_transparency_rgba_with_transparent_pixels():
    assert has_transparency(packshot())


def test_has_transparency_fully_opaque_rgba_is_none():
    assert not has_transparency(Image.new("RGBA", (8, 8), (10, 20, 30, 255)))


def test_has_transparency_rgb_and_grey_are_none():
    assert not has_transparency(Image.new("RGB", (8, 8), "white"))
    assert not has_transparency(Image.new("L", (8, 8), 0))


def palette_image(transparent_index: int) -> Image.Image:
    img = Image.new("P", (8, 8), 0)
    img.putpixel((0, 0), 1)
    img.info["transparency"] = transparent_index
    return img


def test_has_transparency_la_and_palette():
    assert has_transparency(Image.new("LA", (8, 8), (50, 0)))
    assert has_transparency(palette_image(1))
    assert not has_transparency(palette_image(7))  # an index that no pixel uses


def test_has_transparency_webp_with_alpha():
    buffer = io.BytesIO()
    packshot().save(buffer, "WEBP", lossless=True)
    assert has_transparency(Image.open(io.BytesIO(buffer.getvalue())))


def test_cut_out_packshot_is_used_as_is_and_trimmed():
    photo = packshot()
    cut = cut_out(photo, never_called)
    assert cut.mode == "RGBA"
    assert cut.size == (82, 62)  # the rim around the 80×60 rectangle included
    original = np.asarray(photo.crop((49, 39, 131, 101)))
    assert np.array_equal(np.asarray(cut), original)


def test_cut_out_palette_png_uses_its_transparency():
    photo = packshot().convert("RGB").quantize(8)
    photo.info["transparency"] = photo.getpixel((0, 0))  # the palette entry of the black background
    cut = cut_out(photo, never_called)
    assert cut.size == (82, 62) and cut.getpixel((41, 31))[3] == 255


def test_cut_out_fully_opaque_rgba_goes_through_the_remover():
    photo = Image.new("RGBA", (100, 100), (255, 255, 255, 255))
    photo.paste((20, 30, 40, 255), (30, 30, 70, 70))
    asked = []

    def remover(rgb):
        asked.append(rgb.mode)
        return rgb.convert("L").point(lambda v: 255 if v < 128 else 0)

    cut = cut_out(photo, remover)
    assert asked == ["RGB"] and cut.size == (40, 40)


def test_cut_out_trims_faint_haze():
    cut = cut_out(packshot(haze=5), never_called)
    assert cut.size == (82, 62)


def test_cut_out_drops_colour_under_transparent_pixels():
    photo = packshot()
    photo.putpixel((49, 39), (200, 10, 10, 0))  # a hidden corner inside the trimmed box
    cut = np.asarray(cut_out(photo, never_called))
    assert tuple(cut[0, 0]) == (0, 0, 0, 0)


def test_cut_out_fully_transparent_png_finds_nothing():
    with pytest.raises(NothingFound, match="no product was found"):
        cut_out(Image.new("RGBA", (64, 64), (255, 255, 255, 0)), never_called)


def test_cut_out_opaque_photo_needs_a_remover():
    photo = Image.new("RGB", (64, 64), "white")
    photo.putpixel((3, 3), (0, 0, 0))
    with pytest.raises(ValueError, match="background remover is needed, got None"):
        cut_out(photo, None)


def test_cut_out_remover_mask_becomes_alpha_with_noise_snapped():
    photo = Image.new("RGB", (100, 100), (200, 200, 200))
    photo.paste((20, 30, 40), (30, 30, 70, 70))
    levels = np.full((100, 100), 6)           # background noise
    levels[30:70, 30:70] = 246                # an interior the model is only nearly sure of
    levels[29, 30:70] = 120                   # a real soft edge
    cut = np.asarray(cut_out(photo, mask_of(levels)))
    assert cut.shape == (41, 40, 4)
    assert np.all(cut[1:, :, 3] == 255)
    assert np.all(cut[0, :, 3] == 120)
    assert np.array_equal(cut[1:, :, :3], np.asarray(photo)[30:70, 30:70])


def test_cut_out_soft_edge_takes_the_products_colour_not_the_background():
    photo = Image.new("RGB", (100, 100), "white")
    photo.paste((20, 90, 60), (30, 30, 70, 70))
    levels = np.zeros((100, 100))
    levels[28:72, 28:72] = 100  # the mask's soft band reaches two pixels into the white background
    levels[30:70, 30:70] = 255
    cut = np.asarray(cut_out(photo, mask_of(levels)))
    band = cut[..., 3] == 100
    assert band.sum() == 44 * 44 - 40 * 40
    # Without the fix they would be white; 8-bit blurs leave a few levels of error where little is opaque.
    assert np.abs(cut[band, :3].astype(int) - (20, 90, 60)).max() <= 8


def test_cut_out_small_speck_finds_nothing():
    levels = np.zeros((100, 100))
    levels[10:12, 10:12] = 255  # 0.04% of the photo
    photo = Image.effect_noise((100, 100), 60).convert("RGB")
    with pytest.raises(NothingFound, match="0.04% of the photo is foreground"):
        cut_out(photo, mask_of(levels))


def test_cut_out_flat_photo_finds_nothing_without_asking_the_remover():
    with pytest.raises(NothingFound, match="single flat colour"):
        cut_out(Image.new("RGB", (64, 64), (250, 250, 250)), never_called)


def test_cut_out_refuses_a_mask_of_the_wrong_size():
    photo = Image.effect_noise((100, 80), 60).convert("RGB")
    with pytest.raises(ValueError, match=r"\(50, 40\) mask for a \(100, 80\) photo"):
        cut_out(photo, lambda rgb: Image.new("L", (50, 40), 255))


def test_cut_out_small_product_on_a_large_transparent_canvas_is_kept():
    photo = Image.new("RGBA", (1500, 1200), (0, 0, 0, 0))  # an export that kept the photo's frame
    photo.paste(Image.new("RGBA", (30, 40), (20, 90, 60, 255)), (700, 500))  # 0.07% of the canvas
    cut = np.asarray(cut_out(photo, never_called))
    assert cut.shape == (40, 30, 4) and np.all(cut[..., 3] == 255) and np.all(cut[..., :3] == (20, 90, 60))


def test_cut_out_transparent_png_with_a_few_stray_opaque_pixels_finds_nothing():
    photo = Image.new("RGBA", (200, 200), (0, 0, 0, 0))
    photo.paste(Image.new("RGBA", (10, 10), (0, 0, 0, 255)), (5, 5))  # 100 pixels: dust, not a product
    with pytest.raises(NothingFound, match="only 100 of its pixels are opaque"):
        cut_out(photo, never_called)
