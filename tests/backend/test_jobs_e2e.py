"""End to end: the real backend in uvicorn, the tiny pipeline, SeaweedFS. Jobs land as PNGs in S3."""

import io

import numpy as np
import pytest
from PIL import Image

from backend.images import read_png_parameters
from tests.factories import decode_png, make_lora, png_bytes

SMALL = {"steps": 2, "width": 64, "height": 64}


def images_of(backend, job: dict) -> list:
    return [decode_png(backend.storage.get(img["key"])) for img in job["images"]]


def test_three_image_job_lands_three_pngs_and_a_succeeded_manifest(backend):
    ticket = backend.submit({"prompt": "a red shoe on sand", "num_images": 3, "seed": 11, **SMALL,
                             "width": 72, "height": 64})
    assert ticket["status"] == "queued"
    assert ticket["manifest_key"] == f"jobs/{ticket['id']}/job.json"
    assert [i["key"] for i in ticket["images"]] == [f"jobs/{ticket['id']}/{i}.png" for i in range(3)]
    assert [i["seed"] for i in ticket["images"]] == [11, 12, 13]

    job = backend.wait_job(ticket["id"])
    assert job["status"] == "succeeded", job
    stored = backend.storage.get(ticket["manifest_key"])
    assert b'"succeeded"' in stored
    for img in job["images"]:
        assert img["status"] == "succeeded" and img["finished_at"] and img["worker"] in (0, 1)
        data = backend.storage.get(img["key"])
        with Image.open(io.BytesIO(data)) as pic:
            assert pic.format == "PNG" and pic.size == (72, 64)
        params = read_png_parameters(data)
        assert params["seed"] == img["seed"] and params["prompt"] == "a red shoe on sand" and params["steps"] == 2


def test_same_spec_twice_gives_the_same_pixels(backend):
    spec = {"prompt": "a watch on marble", "num_images": 2, "seed": 99, **SMALL}
    first = backend.wait_job(backend.submit(spec)["id"])
    second = backend.wait_job(backend.submit(spec)["id"])
    for a, b in zip(images_of(backend, first), images_of(backend, second)):
        assert np.array_equal(a, b)
    other = backend.wait_job(backend.submit(spec | {"seed": 100})["id"])
    assert not np.array_equal(images_of(backend, other)[0], images_of(backend, first)[0])


def test_one_worker_and_two_workers_give_the_same_pixels(backend, make_backend, tmp_path):
    spec = {"prompt": "a leather bag", "num_images": 4, "seed": 7, **SMALL}
    two = backend.wait_job(backend.submit(spec)["id"])
    assert len({img["worker"] for img in two["images"]}) == 2, "the job should be spread over both workers"
    single = make_backend(WORKERS="1", STORAGE_URL=f"file://{tmp_path}")  # and a local folder instead of S3
    one = single.wait_job(single.submit(spec)["id"])
    assert {img["worker"] for img in one["images"]} == {0}
    folder = tmp_path / "jobs" / one["id"]
    names = sorted(p.name for p in folder.iterdir())
    assert [n for n in names if not n.endswith("_preview.jpg")] == ["0.png", "1.png", "2.png", "3.png", "job.json"]
    assert set(names) <= {"0.png", "1.png", "2.png", "3.png", "job.json"} | {f"{i}_preview.jpg" for i in range(4)}
    assert '"succeeded"' in (folder / "job.json").read_text()
    for a, b in zip(images_of(backend, two), images_of(single, one)):
        assert np.abs(a - b).max() <= 2  # batch 2 vs batch 4: the same seeds, float noise at most


def test_product_lora_changes_the_output_and_loras_stack(backend, tiny_model):
    assert backend.add_product("red-bottle", "sks bottle", make_lora(tiny_model, seed=1), category="cosmetics").status_code == 201
    assert backend.add_product("gold-light", "gold light", make_lora(tiny_model, seed=2)).status_code == 201
    catalog = backend.get("/v1/catalog").json()
    assert {"name": "red-bottle", "trigger": "sks bottle", "category": "cosmetics", "weight": 1.0, "has_lora": True,
            "packshot_key": None, "training": None} in catalog["products"]

    base = {"prompt": "<product> on a beach", "num_images": 1, "seed": 3, **SMALL}
    plain = backend.wait_job(backend.submit(base)["id"])
    assert plain["spec"]["prompt"] == "the product on a beach"
    with_product = backend.wait_job(backend.submit(base | {"product": "red-bottle"})["id"])
    assert with_product["status"] == "succeeded", with_product
    assert with_product["spec"]["prompt"] == "sks bottle on a beach"
    stacked = backend.wait_job(backend.submit(
        base | {"product": "red-bottle", "loras": [{"name": "gold-light", "weight": 0.8}]})["id"])
    assert stacked["status"] == "succeeded", stacked
    # the product's trigger words alone (no LoRA) do not explain the change: compare with the same prompt
    same_prompt = backend.wait_job(backend.submit(base | {"prompt": "sks bottle on a beach"})["id"])
    a, b, c = (images_of(backend, j)[0] for j in (same_prompt, with_product, stacked))
    assert np.abs(a - b).mean() > 1, "the product LoRA should change the picture"
    assert np.abs(b - c).mean() > 1, "the stacked LoRA should change it again"
    again = backend.wait_job(backend.submit(base | {"prompt": "sks bottle on a beach"})["id"])
    assert np.array_equal(images_of(backend, again)[0], a), "a job without LoRAs must not keep the last adapters"


def test_template_fills_what_the_request_leaves_out(backend):
    catalog = backend.get("/v1/catalog").json()
    assert len(catalog["templates"]) >= 12
    template = catalog["templates"][0]
    job = backend.wait_job(backend.submit({"template": template["id"], "num_images": 1, "steps": 2})["id"])
    assert job["spec"]["negative_prompt"] == template["negative_prompt"]
    assert job["spec"]["guidance_scale"] == template["guidance_scale"]
    assert job["spec"]["prompt"] == template["prompt"].replace("<product>", "the product")
    assert (job["spec"]["width"], job["spec"]["height"]) == (64, 64), "the tiny model's native size"


def test_img2img_from_an_uploaded_photo(backend):
    photo = png_bytes(96, 80, color=(250, 250, 20))
    spec = {"prompt": "a lamp", "num_images": 2, "seed": 5, "strength": 0.5, **SMALL}
    job = backend.wait_job(backend.submit(spec, photo=photo)["id"])
    assert job["status"] == "succeeded", job
    assert job["input_key"] == f"jobs/{job['id']}/input.png"
    with Image.open(io.BytesIO(backend.storage.get(job["input_key"]))) as stored:
        assert stored.size == (96, 80) and "exif" not in stored.info
    text_only = backend.wait_job(backend.submit(spec)["id"])
    a, b = images_of(backend, job)[0], images_of(backend, text_only)[0]
    assert a.shape == (64, 64, 3)
    assert np.abs(a - b).mean() > 1, "the photo should shape the picture"


def test_cancel_stops_queued_and_running_images(backend):
    ticket = backend.submit({"prompt": "a chair", "num_images": 16, "steps": 150, "seed": 1,
                             "width": 128, "height": 128})
    r = backend.post(f"/v1/jobs/{ticket['id']}/cancel")
    assert r.status_code == 202
    job = backend.wait_job(ticket["id"], timeout=60)
    assert job["status"] == "canceled"
    canceled = [img for img in job["images"] if img["status"] == "canceled"]
    assert canceled, job
    for img in job["images"]:
        assert img["status"] in ("canceled", "succeeded")
        assert backend.storage.exists(img["key"]) == (img["status"] == "succeeded")
    assert backend.post(f"/v1/jobs/{ticket['id']}/cancel").json()["status"] == "canceled"


def test_idempotency_key_returns_the_first_ticket(backend):
    spec = {"prompt": "a mug", "num_images": 1, **SMALL}
    first = backend.submit(spec, headers={"Idempotency-Key": "order-42"})
    again = backend.submit(spec, headers={"Idempotency-Key": "order-42"})
    other = backend.submit(spec, headers={"Idempotency-Key": "order-43"})
    assert again["id"] == first["id"] and again["images"] == first["images"]
    assert other["id"] != first["id"]


def test_jobs_list_newest_first_and_health_and_metrics(backend):
    ids = [backend.submit({"prompt": f"thing {i}", "num_images": 1, **SMALL})["id"] for i in range(3)]
    listed = [j["id"] for j in backend.get("/v1/jobs", params={"limit": 3}).json()["jobs"]]
    assert listed == ids[::-1]
    for job_id in ids:
        backend.wait_job(job_id)
    health = backend.get("/health").json()
    assert health["status"] == "ok" and len(health["workers"]) == 2 and health["queue"] == {"pending": 0}
    assert {w["device"] for w in health["workers"]} == {"cpu"}
    metrics = backend.get("/metrics").text
    assert "showroom_jobs_submitted_total" in metrics and 'showroom_images_total{status="succeeded"}' in metrics


@pytest.mark.parametrize("photo_kind", ["png", "jpeg-with-exif"])
def test_photo_is_stored_normalised(backend, photo_kind):
    if photo_kind == "png":
        photo = png_bytes(64, 64)
    else:
        img = Image.new("RGB", (64, 64), (10, 200, 10))
        exif = Image.Exif()
        exif[0x010F] = "SecretCam"  # Make
        exif[0x0112] = 6            # Orientation: rotate 90
        out = io.BytesIO()
        img.resize((80, 64)).save(out, format="JPEG", exif=exif)
        photo = out.getvalue()
    job = backend.submit({"prompt": "x", "num_images": 1, **SMALL}, photo=photo)
    stored = backend.storage.get(job["images"][0]["key"].replace("0.png", "input.png"))
    assert b"SecretCam" not in stored
    with Image.open(io.BytesIO(stored)) as pic:
        assert pic.format == "PNG"
        if photo_kind != "png":
            assert pic.size == (64, 80), "EXIF orientation applied, then EXIF removed"
