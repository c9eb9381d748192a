"""A product from photos, end to end on the real stack: a packshot at once (placed by `place` jobs with no
upload), then a LoRA trained on a GPU worker through the executor, resumed after a worker is killed."""

import io
import json
import os
import signal
import time

import numpy as np
import psutil
import pytest
from PIL import Image

from tests.factories import packshot, png_bytes

SMALL = {"steps": 2, "width": 64, "height": 64}


def training_photos(n: int) -> list:
    """n views of the product: the packshot on white, shifted a little each time."""
    photos = []
    for i in range(n):
        canvas = Image.new("RGB", (64, 64), (255, 255, 255))
        with Image.open(io.BytesIO(packshot())) as shot:
            canvas.paste(shot, (4 + 3 * i, 2 + i), shot)
        out = io.BytesIO()
        canvas.save(out, format="PNG")
        photos.append(("photos", (f"{i}.png", out.getvalue(), "image/png")))
    return photos


def add(backend, name: str, **files):
    return backend.post("/v1/products", data={"name": name, "trigger": f"zxq {name}"}, files=files)


def wait_training(backend, training_id: str, timeout: float = 300, until=lambda t: t["status"] in (
        "succeeded", "failed", "canceled")) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        training = backend.get(f"/v1/trainings/{training_id}").json()
        if until(training):
            return training
        time.sleep(0.05)
    raise TimeoutError(f"training {training_id}: {training}\n{backend.log()[-3000:]}")


def test_a_product_from_one_photo_is_placed_without_an_upload(backend):
    r = add(backend, "mug", photo=("mug.png", packshot(), "image/png"))
    assert r.status_code == 201, r.text
    product = r.json()
    assert (product["has_lora"], product["packshot_key"], product["training"]) == (False, "products/mug.png", None)
    with Image.open(io.BytesIO(backend.storage.get("products/mug.png"))) as shot:
        assert shot.mode == "RGBA" and shot.getchannel("A").getextrema() == (0, 255)
    listed = {p["name"]: p for p in backend.get("/v1/catalog").json()["products"]}
    assert listed["mug"]["packshot_key"] == "products/mug.png"

    job = backend.wait_job(backend.submit({"product": "mug", "prompt": "<product> on a desk", "mode": "place",
                                           "num_images": 1, "seed": 4, **SMALL})["id"])
    assert job["status"] == "succeeded", job
    assert job["input_key"] is None and job["spec"]["prompt"] == "zxq mug on a desk"
    with Image.open(io.BytesIO(backend.storage.get(job["layout_key"]))) as layout:
        layer = np.asarray(layout)
    pixels = np.asarray(Image.open(io.BytesIO(backend.storage.get(job["images"][0]["key"]))).convert("RGB"))
    opaque = layer[..., 3] == 255
    assert opaque.sum() > 50 and np.array_equal(pixels[opaque], layer[..., :3][opaque])


@pytest.mark.parametrize("files, message", [
    ({}, "send the product's LoRA as part 'file', a photo of it as part 'photo', or both"),
    ({"photo": ("white.png", png_bytes(color=(255, 255, 255)), "image/png")}, "no product was found"),
    ({"photo": ("x.png", b"not an image", "image/png")}, "could not be read as an image"),
])
def test_a_product_that_cannot_be_made_is_refused_and_nothing_is_stored(backend, files, message):
    r = add(backend, "ghost", **files)
    assert r.status_code == 422 and message in r.json()["detail"]
    assert "ghost" not in {p["name"] for p in backend.get("/v1/catalog").json()["products"]}
    assert not backend.storage.exists("products/ghost.png")


def test_a_product_is_deleted_with_its_files_and_its_jobs_keep_their_images(backend):
    assert add(backend, "vase", photo=("v.png", packshot(), "image/png")).status_code == 201
    job = backend.wait_job(backend.submit({"product": "vase", "prompt": "<product>", "mode": "place",
                                           "num_images": 1, **SMALL})["id"])
    assert backend.delete("/v1/products/vase").status_code == 204
    assert not backend.storage.exists("products/vase.png") and not backend.storage.exists("products/vase.json")
    assert backend.delete("/v1/products/vase").status_code == 404
    assert backend.storage.exists(job["images"][0]["key"])


@pytest.mark.parametrize("count, message", [(1, "needs 2 to 40 photos"), (41, "needs 2 to 40 photos")])
def test_a_training_with_too_few_or_too_many_photos_is_422(backend, count, message):
    assert add(backend, "lamp", photo=("l.png", packshot(), "image/png")).status_code == 201
    photos = [("photos", (f"{i}.png", png_bytes(8, 8), "image/png")) for i in range(count)]
    r = backend.post("/v1/products/lamp/training", files=photos)
    assert r.status_code == 422 and message in r.json()["detail"]


def test_a_training_of_an_unknown_product_is_404_and_an_unreadable_photo_is_422(backend):
    assert backend.post("/v1/products/nobody/training", files=training_photos(2)).status_code == 404
    assert add(backend, "pen", photo=("p.png", packshot(), "image/png")).status_code == 201
    unreadable = [("photos", ("b.png", b"xx", "image/png"))]
    r = backend.post("/v1/products/pen/training", files=training_photos(1) + unreadable)
    assert r.status_code == 422 and r.json()["detail"].startswith("photo 2:")


def start_training(backend, name: str, steps: int, photos: int = 2) -> str:
    """A product added from a packshot, then taught from `photos` photos in `steps` steps: the training's id."""
    assert add(backend, name, photo=(f"{name}.png", packshot(), "image/png")).status_code == 201
    r = backend.post(f"/v1/products/{name}/training", files=training_photos(photos),
                     data={"steps": str(steps), "rank": "4"})
    assert r.status_code == 202, r.text
    return r.json()["id"]


def wait_running(backend, training_id: str, step: int) -> dict:
    """The training once it has passed `step` (it must still be running then)."""
    running = wait_training(backend, training_id, until=lambda t: t["progress"]["step"] >= step or
                            t["status"] in ("succeeded", "failed"))
    assert running["status"] == "running", running
    return running


def test_a_training_teaches_the_product_a_lora_that_changes_its_images(backend):
    assert add(backend, "bottle", photo=("b.png", packshot(), "image/png")).status_code == 201
    r = backend.post("/v1/products/bottle/training", files=training_photos(4), data={"steps": "10", "rank": "4"})
    assert r.status_code == 202, r.text
    ticket = r.json()
    assert ticket["status"] == "queued" and ticket["manifest_key"] == f"trainings/{ticket['id']}/job.json"
    again = backend.post("/v1/products/bottle/training", files=training_photos(2))
    assert again.status_code == 422 and "being trained already" in again.json()["detail"]

    training = wait_training(backend, ticket["id"])
    assert training["status"] == "succeeded", training
    assert training["progress"] == {"step": 10, "steps": 10} and training["loss"] is not None
    assert backend.storage.exists(f"trainings/{ticket['id']}/0.png")
    # the worker found the product in each photo with BG_REMOVAL_MODEL (the tiny "not white" remover): views hold it
    boxes = json.loads(backend.storage.get(f"trainings/{ticket['id']}/boxes.json"))
    for name, (_, (_, photo, _)) in zip(("0.png", "1.png", "2.png", "3.png"), training_photos(4)):
        dark = np.argwhere(np.asarray(Image.open(io.BytesIO(photo)).convert("L")) < 200)
        expected = (dark[:, 1].min(), dark[:, 0].min(), dark[:, 1].max() + 1, dark[:, 0].max() + 1)
        assert all(abs(a - b) <= 3 for a, b in zip(boxes[name], expected)), (name, boxes[name], expected)
    product = {p["name"]: p for p in backend.get("/v1/catalog").json()["products"]}["bottle"]
    assert product["has_lora"] and product["training"] == ticket["id"]
    assert training["product_found"] == [4, 4], "the tiny remover found the product in every photo"
    check = backend.wait_job(training["check_job"])  # test pictures, started by the backend once it learnt
    assert check["status"] == "succeeded" and len(check["images"]) == 4, check
    assert (check["spec"]["product"], check["spec"]["template"]) == ("bottle", "studio-white")
    assert backend.storage.exists("products/bottle.safetensors")

    spec = {"num_images": 1, "seed": 8, **SMALL}
    with_lora = backend.wait_job(backend.submit(spec | {"product": "bottle", "prompt": "<product> on a table"})["id"])
    without = backend.wait_job(backend.submit(spec | {"prompt": "zxq bottle on a table"})["id"])
    assert with_lora["spec"]["prompt"] == without["spec"]["prompt"]
    a, b = (np.asarray(Image.open(io.BytesIO(backend.storage.get(j["images"][0]["key"]))))
            for j in (with_lora, without))
    assert not np.array_equal(a, b), "the trained LoRA changes the picture"


def test_a_product_deleted_mid_training_stops_its_training_and_frees_the_gpu(backend):
    training_id = start_training(backend, "vase", 5000)
    wait_running(backend, training_id, 3)
    assert backend.delete("/v1/products/vase").status_code == 204
    training = wait_training(backend, training_id, timeout=60)
    assert training["status"] == "failed" and "was deleted while it trained; the training was stopped" in \
        training["error"], training
    assert training["progress"]["step"] < 5000, "stopped where it was, not trained to the end"
    job = backend.wait_job(backend.submit({"prompt": "a vase", "num_images": 1, **SMALL})["id"], timeout=120)
    assert job["status"] == "succeeded", "the GPU is free again: its worker was not left training"
    assert not backend.storage.exists("products/vase.safetensors")


def test_a_training_its_owner_stops_ends_canceled_and_frees_the_gpu(backend):
    """POST /v1/trainings/{id}/cancel: canceled at once, the product as it was, the GPU free for pictures, and the
    product may be taught again; an unknown training is 404."""
    training_id = start_training(backend, "lamp", 5000)
    wait_running(backend, training_id, 3)
    r = backend.post(f"/v1/trainings/{training_id}/cancel")
    assert r.status_code == 202 and r.json()["status"] == "canceled", r.text
    job = backend.wait_job(backend.submit({"prompt": "a lamp", "num_images": 1, **SMALL})["id"], timeout=120)
    assert job["status"] == "succeeded", "the GPU is free again: its worker was not left training"
    training = backend.get(f"/v1/trainings/{training_id}").json()
    assert training["status"] == "canceled" and training["progress"]["step"] < 5000, training
    product = {p["name"]: p for p in backend.get("/v1/catalog").json()["products"]}["lamp"]
    assert not product["has_lora"] and not backend.storage.exists("products/lamp.safetensors")
    again = backend.post("/v1/products/lamp/training", files=training_photos(2), data={"steps": "10"})
    assert again.status_code == 202, again.text
    assert wait_training(backend, again.json()["id"])["status"] == "succeeded"
    assert backend.post(f"/v1/trainings/{'0' * 32}/cancel").status_code == 404


def worker_pids(backend) -> list[int]:
    return [p.pid for p in psutil.Process(backend.process.pid).children(recursive=True)
            if "spawn_main" in " ".join(p.cmdline())]


def test_a_worker_killed_mid_training_is_replaced_and_the_training_resumes_from_its_checkpoint(make_backend):
    backend = make_backend(WORKERS="1")
    training_id = start_training(backend, "jar", 40, photos=3)
    wait_running(backend, training_id, 10)
    for pid in worker_pids(backend):
        os.kill(pid, signal.SIGKILL)
    training = wait_training(backend, training_id)
    assert training["status"] == "succeeded", training
    assert training["resumed_from"] and training["resumed_from"] >= 8, training
    assert {p["name"]: p for p in backend.get("/v1/catalog").json()["products"]}["jar"]["has_lora"]
