"""Place mode end to end: the real backend, the tiny pipeline inpainting, rembg with a tiny ONNX model,
SeaweedFS. The contract's promise is checked literally: every pixel where layout.png is opaque is
exactly the layout's colour in every image."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from tests.factories import packshot, png_bytes

SMALL = {"steps": 2, "width": 64, "height": 64}


def rgba(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        assert img.mode == "RGBA", img.mode
        return np.asarray(img)


def rgb(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def assert_product_kept(backend, job: dict) -> np.ndarray:
    """Every image keeps the layout's opaque pixels exactly; returns the layout."""
    assert job["layout_key"] == f"jobs/{job['id']}/layout.png"
    layout = rgba(backend.storage.get(job["layout_key"]))
    spec = job["spec"]
    assert layout.shape == (spec["height"], spec["width"], 4)
    opaque = layout[..., 3] == 255
    assert opaque.sum() > 50, "the product covers a fair part of the canvas"
    for img in job["images"]:
        pixels = rgb(backend.storage.get(img["key"]))
        assert np.array_equal(pixels[opaque], layout[..., :3][opaque]), f"image {img['index']} changed the product"
    return layout


def test_an_rgba_packshot_is_placed_and_kept_pixel_for_pixel(backend):
    spec = {"prompt": "<product> on a marble counter", "mode": "place", "num_images": 2, "seed": 5, **SMALL,
            "placement": {"x": 0.5, "y": 0.55, "scale": 0.6}}
    job = backend.wait_job(backend.submit(spec, packshot())["id"])
    assert job["status"] == "succeeded", job
    assert job["spec"]["mode"] == "place" and job["spec"]["placement"] == spec["placement"]
    layout = assert_product_kept(backend, job)
    cutout = rgba(backend.storage.get(f"jobs/{job['id']}/cutout.png"))
    with Image.open(io.BytesIO(packshot())) as photo:
        left, top, right, bottom = photo.getchannel("A").point(lambda a: 255 if a > 8 else 0).getbbox()
    assert cutout.shape[:2] == (bottom - top, right - left) != (56, 40), "trimmed to the product's box"
    scene = layout[..., 3] == 0
    first, second = (rgb(backend.storage.get(img["key"])) for img in job["images"])
    assert not np.array_equal(first[scene], second[scene]), "the scene around it is generated, per seed"
    assert np.abs(first[scene].astype(int) - 127).mean() > 5, "not the neutral fill left as it was"
    # fitted into 0.6 x 64 = 38.4 px high, centred at y = 35.2: rows 16..54
    rows = np.nonzero(layout[..., 3].max(axis=1))[0]
    assert 15 <= rows.min() <= 17 and 53 <= rows.max() <= 55


def test_shadow_and_harmonize_can_be_turned_off(backend):
    base = {"prompt": "<product> on a table", "mode": "place", "num_images": 1, "seed": 21, **SMALL}
    plain = backend.wait_job(backend.submit(base | {"shadow": False, "harmonize": False}, packshot())["id"])
    shaded = backend.wait_job(backend.submit(base, packshot())["id"])
    layout = assert_product_kept(backend, plain)
    assert_product_kept(backend, shaded)
    below = np.zeros(layout.shape[:2], bool)
    rows = np.nonzero(layout[..., 3].max(axis=1))[0]
    cols = np.nonzero(layout[..., 3].max(axis=0))[0]
    below[rows.max() + 1:rows.max() + 4, cols.min():cols.max() + 1] = True
    below &= layout[..., 3] == 0
    a, b = (rgb(backend.storage.get(j["images"][0]["key"])).astype(int) for j in (plain, shaded))
    assert b[below].sum() < a[below].sum(), "the contact shadow darkens the ground under the product"
    mirrored = backend.wait_job(backend.submit(base | {"shadow": False, "harmonize": False, "reflection": 0.8},
                                               packshot())["id"])
    assert mirrored["status"] == "succeeded" and mirrored["spec"]["reflection"] == 0.8
    assert_product_kept(backend, mirrored)
    c = rgb(backend.storage.get(mirrored["images"][0]["key"])).astype(int)
    above = layout[..., 3] == 0
    above[rows.min():] = False
    assert np.array_equal(c[above], a[above]), "the same scene (same seed) above the product"
    assert np.abs(c[below] - a[below]).sum() > 0, "the product's mirror image under it"


def test_a_jpeg_on_white_goes_through_background_removal(backend):
    photo = packshot(fmt="JPEG", background=(255, 255, 255))
    job = backend.wait_job(backend.submit({"prompt": "<product> on a beach", "mode": "place", "num_images": 1,
                                           "seed": 3, **SMALL}, photo)["id"])
    assert job["status"] == "succeeded", job
    cutout = rgba(backend.storage.get(f"jobs/{job['id']}/cutout.png"))
    solid = (cutout[..., 3] == 255).sum()
    assert 600 < solid < 48 * 24, f"the dark product is kept and the white background dropped ({solid} px)"
    assert_product_kept(backend, job)


def test_a_photo_with_no_product_fails_the_job_with_the_reason(backend):
    blank = png_bytes(64, 64, color=(255, 255, 255), fmt="JPEG")
    job = backend.wait_job(backend.submit({"prompt": "a scene", "mode": "place", "num_images": 2, **SMALL},
                                          blank)["id"])
    assert job["status"] == "failed"
    assert all(img["status"] == "failed" and "no product was found" in img["error"] for img in job["images"])
    assert "no product was found" in job["error"]


def test_a_wide_photo_in_restyle_mode_keeps_its_aspect(backend):
    job = backend.wait_job(backend.submit({"prompt": "a lamp", "num_images": 1, "steps": 2, "strength": 0.5},
                                          png_bytes(128, 64))["id"])
    assert job["status"] == "succeeded", job
    assert job["spec"]["mode"] == "restyle"
    width, height = job["spec"]["width"], job["spec"]["height"]
    assert abs(width / height - 2) < 0.2 and width % 8 == 0 and height % 8 == 0
    assert rgb(backend.storage.get(job["images"][0]["key"])).shape[:2] == (height, width)


@pytest.mark.parametrize("spec, photo, message", [
    ({"placement": {"x": 1.5}}, True, "placement.x"),
    ({"placement": {"scale": 0.01}}, True, "placement.scale"),
    ({"placement": {"x": 0.5, "rotate": 3}}, True, "rotate"),
    ({}, False, "needs a photo of the product"),
    ({"mode": "restyle"}, False, "send one as the multipart part 'image'"),
    ({"mode": "generate"}, True, "mode 'generate' uses no photo"),
    ({"mode": "generate", "placement": {"x": 0.2}}, False, "placement is used only in mode 'place'"),
    ({"mode": "generate", "reflection": 0.3}, False, "reflection is used only in mode 'place'"),
    ({"reflection": 1.5}, True, "reflection"),
    ({"mode": "paint"}, True, "mode"),
])
def test_bad_place_requests_are_422_with_the_reason(backend, spec, photo, message):
    body = {"prompt": "x", "mode": "place", **SMALL} | spec
    files = {"spec": (None, json.dumps(body), "application/json")}
    if photo:
        files["image"] = ("p.png", packshot(), "image/png")
    r = backend.post("/v1/jobs", files=files)
    assert r.status_code == 422, r.text
    assert message in r.json()["detail"]


def test_cutout_endpoint_shows_what_place_mode_keeps(backend):
    r = backend.post("/v1/cutouts", files={"photo": ("p.jpg", packshot(fmt="JPEG", background=(255, 255, 255)))})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    cutout = rgba(r.content)
    assert cutout.shape[:2][0] > cutout.shape[:2][1] and (cutout[..., 3] == 255).sum() > 600
    r = backend.post("/v1/cutouts", files={"photo": ("w.png", png_bytes(color=(255, 255, 255)))})
    assert r.status_code == 422 and "no product was found" in r.json()["detail"]
