"""A product taught on SDXL, end to end on the real stack: POST /v1/products/{name}/training on a backend whose
MODEL_ID is a tiny SDXL pipeline trains on a GPU worker (here the CPU) at the model's native size, the LoRA
passes the upload checks, the product gets has_lora, and its LoRA changes the product's pictures."""

import io

import numpy as np
import pytest
from PIL import Image

from tests.backend.test_products_e2e import training_photos, wait_training
from tests.factories import packshot

SMALL = {"steps": 2, "width": 64, "height": 64}


@pytest.fixture(scope="module")
def xl_backend(make_backend, tmp_path_factory):
    from backend.tools.gpu_check import TINY_XL, TINY_XL_TEXT_2, save_sdxl

    model = save_sdxl(TINY_XL, TINY_XL_TEXT_2, tmp_path_factory.mktemp("tiny-sdxl"), "cpu")
    return make_backend(MODEL_ID=str(model))


def test_a_training_on_sdxl_teaches_the_product_a_lora_that_changes_its_images(xl_backend):
    r = xl_backend.post("/v1/products", data={"name": "kettle", "trigger": "zxq kettle"},
                        files={"photo": ("k.png", packshot(), "image/png")})
    assert r.status_code == 201, r.text
    r = xl_backend.post("/v1/products/kettle/training", files=training_photos(3), data={"steps": "10", "rank": "4"})
    assert r.status_code == 202, r.text
    training = wait_training(xl_backend, r.json()["id"])
    assert training["status"] == "succeeded", (training, xl_backend.log()[-3000:])
    native = xl_backend.get("/health").json()["native_size"]
    assert training["resolution"] == native == 64  # the tiny SDXL's native size, as its jobs are made
    assert training["progress"] == {"step": 10, "steps": 10} and np.isfinite(training["loss"])
    product = {p["name"]: p for p in xl_backend.get("/v1/catalog").json()["products"]}["kettle"]
    assert product["has_lora"] and product["training"] == training["id"]

    spec = {"num_images": 1, "seed": 8, **SMALL}
    with_lora = xl_backend.wait_job(xl_backend.submit(spec | {"product": "kettle",
                                                               "prompt": "<product> on a table"})["id"])
    without = xl_backend.wait_job(xl_backend.submit(spec | {"prompt": "zxq kettle on a table"})["id"])
    assert with_lora["status"] == without["status"] == "succeeded", (with_lora, without)
    assert with_lora["spec"]["prompt"] == without["spec"]["prompt"]
    a, b = (np.asarray(Image.open(io.BytesIO(xl_backend.storage.get(j["images"][0]["key"]))))
            for j in (with_lora, without))
    assert not np.array_equal(a, b), "the trained LoRA changes the picture"
