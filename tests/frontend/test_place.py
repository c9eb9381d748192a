"""The Create page's modes: place (the cut-out, where it goes, the realism switches), restyle and no photo.

The pure parts are held to the backend's own arithmetic; the page runs under AppTest against the real
backend (tiny model, the "not white" segmenter, SeaweedFS)."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from frontend import placement, services
from frontend.client import BackendError, ShowroomClient
from tests.factories import packshot, png_bytes
from tests.frontend.conftest import assert_no_exception, frontend_env, page_text

PLACE_ONLY_MISSING = "cosmetics-water-splash"  # a template whose modes leave out "place"


def test_the_canvas_preview_puts_the_product_where_the_backend_places_it():
    """The preview is the backend's own product layer, shrunk: its product box is the layer's, scaled."""
    from backend.place.layout import Placement, place

    rng = np.random.default_rng(7)
    for _ in range(40):
        cut_w, cut_h = (int(v) for v in rng.integers(4, 120, 2))
        width, height = (int(v) * 8 for v in rng.integers(8, 80, 2))
        x, y, scale = float(rng.uniform(0.2, 0.8)), float(rng.uniform(0.2, 0.8)), float(rng.uniform(0.1, 1))
        red = io.BytesIO()
        Image.new("RGBA", (cut_w, cut_h), (220, 0, 0, 255)).save(red, format="PNG")
        layer = place(Image.new("RGBA", (cut_w, cut_h), (9, 9, 9, 255)), width, height, Placement(x, y, scale))
        preview = Image.open(io.BytesIO(placement.canvas_preview(red.getvalue(), width, height, x, y, scale)))
        sx, sy = preview.width / width, preview.height / height
        rgb = np.asarray(preview.convert("RGB")).astype(int)
        ys, xs = np.nonzero((rgb[..., 0] > 120) & (rgb[..., 1] < 120))  # more product than canvas
        left, top, right, bottom = layer.getchannel("A").getbbox()
        case = (cut_w, cut_h, width, height, x, y, scale)
        assert abs(xs.min() - left * sx) <= 1 and abs(xs.max() + 1 - right * sx) <= 1, case
        assert abs(ys.min() - top * sy) <= 1 and abs(ys.max() + 1 - bottom * sy) <= 1, case


def test_canvas_presets_are_sized_as_the_backend_sizes_an_aspect():
    from backend.jobs.specs import size_for_aspect

    assert placement.canvas_size("4:5", 512) == (456, 576)
    assert placement.canvas_size("16:9", 1024) == (1368, 768)
    assert placement.canvas_size("9:16", 64) == (64, 112), "the aspect kept when a side would fall below 64"
    for native in (64, 512, 768, 1024):
        for name, (across, down) in placement.ASPECTS.items():
            width, height = placement.canvas_size(name, native)
            assert (width, height) == size_for_aspect(across / down, native)
            assert width % 8 == 0 and height % 8 == 0


def test_the_canvas_preview_draws_the_product_at_its_preset():
    red = io.BytesIO()
    Image.new("RGBA", (30, 60), (220, 0, 0, 255)).save(red, format="PNG")
    right = placement.PRESETS["right"]
    preview = Image.open(io.BytesIO(placement.canvas_preview(red.getvalue(), 640, 360, right.x, right.y, 0.5)))
    assert preview.size == (320, 180)
    rgb = np.asarray(preview.convert("RGB")).astype(int)
    ys, xs = np.nonzero((rgb[..., 0] > 200) & (rgb[..., 1] < 30))
    assert abs(xs.mean() - 0.67 * 320) < 1.5 and abs(ys.mean() - 0.55 * 180) < 1.5
    assert ys.max() - ys.min() + 1 == pytest.approx(0.5 * 180, abs=1), "fitted into scale × height"


def test_the_canvas_preview_shows_the_shadow_and_reflection_the_job_will_draw():
    """The Realism settings are seen before the job is sent: red mirrored under the product's base with a
    reflection, a darker floor just under it with a shadow, and neither when both are off."""
    red = io.BytesIO()
    Image.new("RGBA", (40, 80), (220, 0, 0, 255)).save(red, format="PNG")

    def under_the_base(**finish) -> np.ndarray:
        preview = Image.open(io.BytesIO(placement.canvas_preview(red.getvalue(), 512, 512, 0.5, 0.4, 0.4, **finish)))
        rgb = np.asarray(preview.convert("RGB")).astype(int)
        ys, xs = np.nonzero((rgb[..., 0] > 200) & (rgb[..., 1] < 30))
        return rgb[ys.max() + 2:ys.max() + 6, xs.min() + 4:xs.max() - 3].mean(axis=(0, 1))  # just below, inside

    plain = under_the_base()
    assert np.allclose(plain, placement.CANVAS_FILL, atol=3), plain
    mirrored = under_the_base(reflection=0.6)
    assert mirrored[0] - mirrored[1] > 60, ("the product's red shows in the floor", mirrored)
    shaded = under_the_base(shadow=True)
    assert (shaded < np.array(placement.CANVAS_FILL) - 20).all() and abs(shaded[0] - shaded[1]) < 4, shaded


@pytest.mark.parametrize("body, native", [({"native_size": 1024}, 1024), ({}, 512), ({"native_size": "big"}, 512),
                                          ({"native_size": 1001}, 512), ({"native_size": True}, 512)])
def test_native_size_comes_from_health_with_a_default(body, native):
    assert services.health_from({"status": "ok", "workers": []} | body).native_size == native


def captions(at) -> list[str]:
    return [caption for image in at.image for caption in image.captions]


def place_mode(at):
    at.radio(key="mode").set_value("place").run()
    assert_no_exception(at)
    return at


def test_place_mode_shows_the_cutout_and_sends_the_chosen_placement(backend, open_app, monkeypatch):
    asked = []
    original = ShowroomClient.cutout
    monkeypatch.setattr(ShowroomClient, "cutout", lambda self, photo: asked.append(photo[0]) or original(self, photo))
    at = place_mode(open_app(frontend_env(backend)))
    assert "Upload a photo of the product" in page_text(at) and at.button(key="generate").disabled
    assert not [t for t in at.button if t.key == f"tpl-{PLACE_ONLY_MISSING}"], "only styles made for placing"
    at.toggle(key="all_styles").set_value(True).run()
    assert [t for t in at.button if t.key == f"tpl-{PLACE_ONLY_MISSING}"], "all styles on request"

    at.file_uploader(key="photo").set_value(("bottle.png", packshot(80, 112), "image/png")).run()
    assert_no_exception(at)
    assert captions(at) == ["The cut-out: kept pixel for pixel", "Where it goes · 64 × 64"], \
        "the cut-out on its checkerboard, and the canvas with the product placed"
    assert not at.button(key="generate").disabled
    at.pills(key="place_at").set_value("right").run()
    assert at.slider(key="place_scale").proto.format == "percent", "0.6 reads 60% (of the picture), not 0.60"
    at.slider(key="place_scale").set_value(0.8).run()
    at.pills(key="aspect").set_value("9:16").run()
    assert (at.number_input(key="width").value, at.number_input(key="height").value) == (64, 112), \
        "9:16 at the tiny model's 64 × 64 pixels, grown as a whole to the contract's minimum side of 64"
    at.toggle(key="harmonize").set_value(False).run()
    assert at.slider(key="reflection").value == 0.0, "no reflection unless asked: most floors are matte"
    at.slider(key="reflection").set_value(0.3).run()
    at.text_area(key="prompt").input("<product> on a stone plinth")
    at.number_input(key="steps").set_value(2)
    at.slider(key="num_images").set_value(1)
    at.button(key="generate").click().run()
    assert_no_exception(at)
    assert asked == ["bottle.png"], "one cut-out per photo, however many reruns"

    job_id = at.query_params.get("job")
    assert job_id, "the job was not started: " + page_text(at)
    spec = json.loads(backend.storage.get(f"jobs/{job_id}/job.json"))["spec"]
    assert spec["mode"] == "place" and spec["placement"] == {"x": 0.67, "y": 0.55, "scale": 0.8}
    assert (spec["width"], spec["height"]) == (64, 112) and spec["shadow"] is True and spec["harmonize"] is False
    assert spec["reflection"] == 0.3
    job = backend.wait_job(job_id)
    assert job["status"] == "succeeded", job
    assert job["layout_key"] == f"jobs/{job_id}/layout.png"


def test_a_photo_with_nothing_to_cut_out_says_why_and_generate_is_disabled(backend, open_app):
    at = place_mode(open_app(frontend_env(backend)))
    at.text_area(key="prompt").input("a bottle on a beach")
    at.file_uploader(key="photo").set_value(("white.jpg", png_bytes(96, 72, (255, 255, 255), fmt="JPEG"),
                                             "image/jpeg")).run()
    assert_no_exception(at)
    shown = " ".join(e.value for e in at.error)
    assert "Nothing to place in this photo" in shown and "single flat colour" in shown, page_text(at)
    assert at.button(key="generate").disabled
    assert "No product could be cut out of this photo" in at.button(key="generate").help
    assert not [s for s in at.slider if s.key == "place_scale"], "nothing to place, so no placement"


def test_a_backend_without_a_background_remover_says_so_in_plain_words(backend, open_app, monkeypatch):
    detail = "the background remover could not be opened (BG_REMOVAL_MODEL='birefnet-general': no internet)"

    def unavailable(self, photo):  # the backend's own 503 when rembg's model cannot be opened
        raise BackendError(detail, 503)

    monkeypatch.setattr(ShowroomClient, "cutout", unavailable)
    at = place_mode(open_app(frontend_env(backend)))
    at.file_uploader(key="photo").set_value(("bottle.jpg", png_bytes(96, 72, (200, 40, 40), fmt="JPEG"),
                                             "image/jpeg")).run()
    assert_no_exception(at)
    (warned,) = [w.value for w in at.warning if "cut products out" in w.value]
    assert "Showroom cannot cut products out right now" in warned and "transparent" in warned, warned
    assert "BG_REMOVAL_MODEL" not in warned, "the operator's reason goes under an expander, not in the warning"
    assert [c.value for c in at.code] == [detail], "what the backend said, for whoever runs it"
    assert at.button(key="generate").disabled
    assert "cannot cut products out" in at.button(key="generate").help


def test_restyle_shows_strength_and_no_placement(backend, open_app):
    at = open_app(frontend_env(backend))
    assert_no_exception(at)
    assert at.radio(key="mode").value == "generate", "no photo until one is asked for"
    assert not [s for s in at.slider if s.key in ("strength", "place_scale")]
    at.radio(key="mode").set_value("restyle").run()
    assert [s for s in at.slider if s.key == "strength"]
    assert not [s for s in at.slider if s.key == "place_scale"] and not [p for p in at.pills if p.key == "place_at"]
    assert not [t for t in at.toggle if t.key in ("shadow", "harmonize")]
    assert at.button(key="generate").disabled, "restyle needs a photo"
    assert at.file_uploader(key="photo").label == "Your photo", "the whole photo is repainted, not a product cut out"
    at.file_uploader(key="photo").set_value(("room.png", png_bytes(96, 72, (20, 160, 60)), "image/png")).run()
    assert not at.button(key="generate").disabled, "a photo to restyle"
    size = f"{at.session_state['width']} × {at.session_state['height']}"
    assert captions(at) == ["Your photo", f"What is repainted · {size}"], "no cut-out: the photo and its crop"


def test_the_restyle_preview_is_the_crop_the_backend_repaints():
    """A wide photo at 1:1 loses its sides, as fit_photo crops it; a phone photo stored sideways with its EXIF
    turn is shown upright; a file that is no picture shows nothing (the backend explains on Generate)."""
    wide = Image.new("RGB", (300, 100), (0, 0, 255))
    wide.paste((255, 0, 0), (100, 0, 200, 100))  # red in the middle third
    out = io.BytesIO()
    wide.save(out, format="JPEG", quality=95)
    photo, crop = (Image.open(io.BytesIO(p)) for p in placement.restyle_preview(out.getvalue(), 512, 512))
    assert crop.size == (320, 320) and photo.size == (300, 100)
    red = np.asarray(crop.convert("RGB")).astype(int)
    assert (red[..., 0] > 200).mean() > 0.97, "only the red middle is kept"

    tall = Image.new("RGB", (100, 200), (0, 200, 0))
    turned = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned: shown rotated 90° clockwise
    tall.save(turned, format="JPEG", exif=exif)
    photo, _ = (Image.open(io.BytesIO(p)) for p in placement.restyle_preview(turned.getvalue(), 512, 512))
    assert photo.size == (200, 100), "upright, as the backend turns it"
    assert placement.restyle_preview(b"not a picture", 512, 512) is None


def stored_product(backend, name: str, has_lora: bool = False) -> str:
    """A catalog product with a packshot, written to storage as the backend writes one."""
    record = {"name": name, "trigger": "sks vase", "category": "home", "weight": 1.0, "has_lora": has_lora,
              "packshot_key": f"products/{name}.png", "training": None}
    backend.storage.put(record["packshot_key"], packshot(60, 84), "image/png")
    backend.storage.put(f"products/{name}.json", json.dumps(record).encode(), "application/json")
    services.catalog.clear()  # the catalog is cached a minute; the product was just written
    return name


def not_learnt_warnings(at) -> list[str]:
    return [w.value for w in at.warning if "has not learnt" in w.value]


def test_an_unlearnt_product_without_a_photo_says_so_and_offers_to_place_it(backend, open_app):
    name = stored_product(backend, "frontend-jug")
    at = open_app(frontend_env(backend))
    at.selectbox(key="product").set_value(name).run()
    assert_no_exception(at)
    assert at.radio(key="mode").value == "generate"
    (warned,) = not_learnt_warnings(at)
    assert f"Showroom has not learnt {name} yet" in warned and "not yours" in warned, \
        "No photo with an unlearnt product draws a product like it: said before GPU time is spent"
    at.button(key="place-instead").click().run()
    assert_no_exception(at)
    assert at.radio(key="mode").value == "place" and not not_learnt_warnings(at)
    assert f"{name}'s cut-out: kept pixel for pixel" in captions(at), "its own photo, placed as it is"

    learnt = stored_product(backend, "frontend-jug-learnt", has_lora=True)
    at = open_app(frontend_env(backend))
    at.selectbox(key="product").set_value(learnt).run()
    assert not not_learnt_warnings(at) and not [b for b in at.button if b.key == "place-instead"]


def test_place_mode_places_a_catalog_products_packshot_without_an_upload(backend, open_app):
    name = stored_product(backend, "frontend-vase")
    at = open_app(frontend_env(backend))
    at.selectbox(key="product").set_value(name)
    at = place_mode(at)
    # the picker's own picture (no caption: the picker names the product), then the placed packshot
    assert captions(at)[:2] == ["", f"{name}'s cut-out: kept pixel for pixel"], page_text(at)
    assert not at.button(key="generate").disabled
    at.text_area(key="prompt").input("<product> on a shelf")
    at.number_input(key="steps").set_value(2)
    at.slider(key="num_images").set_value(1)
    at.button(key="generate").click().run()
    job_id = at.query_params.get("job")
    assert job_id, "the job was not started: " + page_text(at)
    manifest = json.loads(backend.storage.get(f"jobs/{job_id}/job.json"))
    assert manifest["spec"]["mode"] == "place" and manifest["spec"]["product"] == name
    assert manifest["input_key"] is None, "no photo was sent: the packshot is placed"


def two_colour_photo(width: int = 96, height: int = 72) -> bytes:
    """A dark photo with no plain ground anywhere, a product filling the frame as a close-up would (a glint of
    white in it: the tiny "not white" segmenter takes a photo's brightest pixels for its ground)."""
    img = Image.new("RGB", (width, height), (40, 40, 40))
    img.paste((90, 30, 30), (width // 2, 0, width, height))
    img.paste((255, 255, 255), (10, 10, 12, 12))
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def test_a_photo_with_no_background_around_the_product_says_the_whole_photo_is_kept(backend, open_app):
    at = place_mode(open_app(frontend_env(backend)))
    at.file_uploader(key="photo").set_value(("close-up.png", two_colour_photo(), "image/png")).run()
    assert_no_exception(at)
    assert any("No background was found around the product" in w.value for w in at.warning), page_text(at)
    assert not at.button(key="generate").disabled, "a warning, not a refusal: the photo can still be placed"

    at.file_uploader(key="photo").set_value(("bottle.png", packshot(80, 112, background=(255, 255, 255)),
                                             "image/png")).run()
    assert not any("No background was found" in w.value for w in at.warning), "a packshot on white cuts out clean"


def test_the_whole_photo_check_turns_a_phone_photo_upright_by_its_exif():
    exif = Image.Exif()
    exif[0x0112] = 6  # stored on its side: shown 72 wide and 96 high
    sideways = io.BytesIO()
    Image.new("RGB", (96, 72), (40, 40, 40)).save(sideways, format="JPEG", exif=exif)
    upright_cut = png_bytes(72, 96, (40, 40, 40))
    assert placement.fills_the_photo(upright_cut, sideways.getvalue())
    assert not placement.fills_the_photo(png_bytes(96, 72, (40, 40, 40)), sideways.getvalue())
    soft = io.BytesIO()  # a remover unsure of everything: no pixel quite opaque, none see-through
    Image.new("RGBA", (72, 96), (40, 40, 40, 190)).save(soft, format="PNG")
    assert placement.fills_the_photo(soft.getvalue(), sideways.getvalue())


def test_a_photo_to_restyle_gives_the_picture_its_own_shape_until_another_is_chosen(backend, open_app):
    """A landscape photo at the default 1:1 lost its sides without a word; now its shape is the picture's, and a
    shape the owner picks afterwards is kept until another photo comes."""
    at = open_app(frontend_env(backend))
    native = at.session_state["width"]
    at.radio(key="mode").set_value("restyle").run()
    at.file_uploader(key="photo").set_value(("room.jpg", png_bytes(800, 600, fmt="JPEG"), "image/jpeg")).run()
    assert_no_exception(at)
    width, height = at.session_state["width"], at.session_state["height"]
    assert (width, height) == placement.photo_canvas(png_bytes(800, 600), native)
    assert abs(width / height - 4 / 3) < 0.08 and width % 8 == 0 and height % 8 == 0, (width, height)
    assert f"{width} × {height} px · your photo's shape" in [c.value for c in at.caption]
    assert captions(at)[-1] == f"What is repainted · {width} × {height}"

    at.pills(key="aspect").set_value("1:1").run()
    at.slider(key="strength").set_value(0.6).run()
    assert (at.session_state["width"], at.session_state["height"]) == (native, native), "the owner's choice stays"

    at.file_uploader(key="photo").set_value(("tall.png", png_bytes(300, 600), "image/png")).run()
    assert at.session_state["height"] > at.session_state["width"], "another photo: its own shape again"


def test_a_file_that_is_no_picture_is_said_at_once_and_blocks_generate(backend, open_app):
    at = open_app(frontend_env(backend))
    for mode in ("restyle", "place"):
        at.radio(key="mode").set_value(mode).run()
        at.file_uploader(key="photo").set_value(("scan.jpg", b"%PDF-1.7 a catalogue page", "image/jpeg")).run()
        assert_no_exception(at)
        (said,) = [e.value for e in at.error]
        assert said.startswith("**This file is not a picture Showroom can read.** Choose a PNG, JPEG or WebP"), said
        assert "Error" not in said and "BytesIO" not in said and "Nothing to place" not in said
        assert at.button(key="generate").disabled
        assert at.button(key="generate").help == "Choose a PNG, JPEG or WebP photo: this file cannot be read as one."
    at.file_uploader(key="photo").set_value(("anim.png", png_bytes(40, 40, fmt="GIF"), "image/png")).run()
    assert [e.value for e in at.error] == ["**This is a GIF file, not a photo Showroom takes.** Save it as PNG, "
                                           "JPEG or WebP and choose that."]


def test_a_canvas_of_the_photos_shape_stands_it_upright_first():
    tall = Image.new("RGB", (400, 200), (0, 200, 0))  # stored sideways: 400 x 200, shown 200 x 400
    turned = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    tall.save(turned, format="JPEG", exif=exif)
    width, height = placement.photo_canvas(turned.getvalue(), 512)
    assert height > width and abs(height / width - 2) < 0.05 and abs(width * height - 512 * 512) < 0.05 * 512 * 512
    assert placement.photo_canvas(png_bytes(512, 512), 512) == (512, 512) == placement.canvas_size("1:1", 512)
    assert placement.photo_canvas(b"not a picture", 512) is None
