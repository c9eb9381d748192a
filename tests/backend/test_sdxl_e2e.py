"""SDXL end to end on the CPU: a tiny SDXL pipeline (two text encoders, the real classes at toy size) behind
the real backend, in every mode; the product's opaque pixels are kept exactly in place mode there too."""

import io

import numpy as np
import pytest
from PIL import Image

from tests.factories import packshot, png_bytes

SMALL = {"steps": 2, "width": 64, "height": 64}


@pytest.fixture(scope="module")
def xl_backend(make_backend, tmp_path_factory):
    from backend.tools.gpu_check import TINY_XL, TINY_XL_TEXT_2, save_sdxl

    model = save_sdxl(TINY_XL, TINY_XL_TEXT_2, tmp_path_factory.mktemp("tiny-sdxl"), "cpu")
    return make_backend(MODEL_ID=str(model))


def test_sdxl_generates(xl_backend):
    job = xl_backend.wait_job(xl_backend.submit({"prompt": "a teapot", "num_images": 2, "seed": 3, **SMALL})["id"])
    assert job["status"] == "succeeded", job
    assert xl_backend.get("/health").json()["native_size"] == 64


def test_sdxl_restyles_a_photo(xl_backend):
    job = xl_backend.wait_job(xl_backend.submit({"prompt": "a lamp", "num_images": 1, "strength": 0.5, **SMALL},
                                                png_bytes(96, 64))["id"])
    assert job["status"] == "succeeded" and job["spec"]["mode"] == "restyle", job


def test_sdxl_places_a_product_and_keeps_its_pixels(xl_backend):
    job = xl_backend.wait_job(xl_backend.submit({"prompt": "<product> on a shelf", "mode": "place",
                                                 "num_images": 1, **SMALL}, packshot())["id"])
    assert job["status"] == "succeeded", job
    layer = np.asarray(Image.open(io.BytesIO(xl_backend.storage.get(job["layout_key"]))))
    pixels = np.asarray(Image.open(io.BytesIO(xl_backend.storage.get(job["images"][0]["key"]))).convert("RGB"))
    opaque = layer[..., 3] == 255
    assert opaque.sum() > 50 and np.array_equal(pixels[opaque], layer[..., :3][opaque])
