"""Watching and handling results on the real stack: per-image progress and live previews in the manifest,
deleting a job (running or finished) with every object it had, and PNG metadata without server paths."""

import io
import time

from PIL import Image

from backend.images import read_png_parameters


def test_a_running_image_shows_progress_and_a_preview_before_its_png(backend):
    ticket = backend.submit({"prompt": "a slow vase", "num_images": 1, "steps": 40, "width": 64, "height": 64,
                             "seed": 2})
    image_key = ticket["images"][0]["key"]
    seen_progress, preview_before_png = None, False
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = backend.get(f"/v1/jobs/{ticket['id']}").json()
        img = job["images"][0]
        progress = img["progress"]
        if progress and 0 < progress["step"] < progress["steps"] == 40:
            seen_progress = progress
        if img["preview_key"] and not backend.storage.exists(image_key):
            preview_before_png = backend.storage.exists(img["preview_key"]) or preview_before_png
        if job["status"] == "succeeded":
            break
        time.sleep(0.05)
    assert seen_progress, "0 < step < steps was in the manifest while the image ran"
    assert preview_before_png, "a preview object existed before the final PNG"
    assert img["preview_key"] == f"jobs/{ticket['id']}/0_preview.jpg" and img["progress"] is None
    with Image.open(io.BytesIO(backend.storage.get(img["preview_key"]))) as preview:
        assert preview.format == "JPEG" and max(preview.size) <= 256


def test_delete_removes_every_object_of_a_finished_job(backend):
    job = backend.wait_job(backend.submit({"prompt": "a cup", "num_images": 2, "steps": 2, "width": 64,
                                           "height": 64})["id"])
    assert backend.storage.list_files(f"jobs/{job['id']}/")
    r = backend.delete(f"/v1/jobs/{job['id']}")
    assert r.status_code == 204, r.text
    assert backend.storage.list_files(f"jobs/{job['id']}/") == []
    assert backend.get(f"/v1/jobs/{job['id']}").status_code == 404
    assert backend.delete(f"/v1/jobs/{job['id']}").status_code == 404
    assert job["id"] not in {j["id"] for j in backend.get("/v1/jobs?limit=50").json()["jobs"]}


def test_delete_of_a_running_job_cancels_it_and_leaves_nothing_behind(backend):
    ticket = backend.submit({"prompt": "a long job", "num_images": 4, "steps": 60, "width": 64, "height": 64})
    deadline = time.monotonic() + 60
    while backend.get(f"/v1/jobs/{ticket['id']}").json()["status"] != "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert backend.delete(f"/v1/jobs/{ticket['id']}").status_code == 204
    time.sleep(3)  # past the first late sweep: a preview or image in flight when the delete came is gone too
    assert backend.storage.list_files(f"jobs/{ticket['id']}/") == []
    assert backend.get(f"/v1/jobs/{ticket['id']}").status_code == 404


def test_a_png_names_the_model_without_the_servers_folder(backend, tiny_model):
    job = backend.wait_job(backend.submit({"prompt": "a hat", "num_images": 1, "steps": 2, "width": 64,
                                           "height": 64})["id"])
    params = read_png_parameters(backend.storage.get(job["images"][0]["key"]))
    assert params["model"] == tiny_model.name and str(tiny_model.parent) not in str(params)


def test_jobs_page_back_with_before(backend):
    ids = [backend.submit({"prompt": "p", "num_images": 1, "steps": 1, "width": 64, "height": 64})["id"]
           for _ in range(3)]
    newest = backend.get("/v1/jobs?limit=2").json()["jobs"]
    older = backend.get(f"/v1/jobs?limit=2&before={newest[-1]['id']}").json()["jobs"]
    assert [j["id"] for j in newest][:2] == ids[::-1][:2]
    assert older and older[0]["id"] == ids[0] and all(j["id"] < newest[-1]["id"] for j in older)
    assert backend.get("/v1/jobs?before=nonsense").status_code == 404
