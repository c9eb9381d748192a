"""Reusing a job made from a photo brings the photo back: History's Reuse (or a job's Use these settings) puts the
job's stored `input.png` in the Create form, so Generate works at once; a file chosen after replaces it, Remove
leaves it out, and a photo that cannot be read back leaves the form asking for it, as before."""

import json

from tests.factories import png_bytes
from tests.frontend.conftest import SMALL, assert_no_exception, frontend_env, page_text

ASK_AGAIN = "upload it again to use it"


def restyle_job(backend, color=(20, 160, 60)) -> dict:
    """A finished restyle job made from a 96 x 64 photo, at 64 x 64: not the photo's own shape."""
    spec = {"prompt": "a green bottle on a beach", "mode": "restyle", "strength": 0.6, "seed": 31, "num_images": 1,
            **SMALL}
    job = backend.wait_job(backend.submit(spec, photo=png_bytes(96, 64, color))["id"])
    assert job["status"] == "succeeded" and job["input_key"] == f"jobs/{job['id']}/input.png", job
    return job


def manifest(backend, job_id: str) -> dict:
    return json.loads(backend.storage.get(f"jobs/{job_id}/job.json"))


def test_history_reuse_brings_the_photo_back_and_generate_sends_it(backend, open_app):
    job = restyle_job(backend)
    at = open_app(frontend_env(backend))
    at.switch_page("app_pages/history.py").run()
    at.button(key=f"reuse-{job['id']}").click().run()
    assert_no_exception(at)
    assert ASK_AGAIN not in page_text(at) and "Its photo is back in the form" in page_text(at)
    assert "from the job you reused" in page_text(at), "the photo is named under the upload box"
    assert (at.session_state["mode"], at.session_state["width"], at.session_state["height"]) == ("restyle", 64, 64), \
        "the job's size, not the photo's own shape"
    at.switch_page("app_pages/create.py").run()  # AppTest reruns the page it last switched to, not the app's
    assert not at.button(key="generate").disabled, page_text(at)

    at.button(key="generate").click().run()
    assert_no_exception(at)
    again = at.query_params.get("job")
    assert again and again != job["id"], page_text(at)
    made = manifest(backend, again)
    assert made["input_key"] == f"jobs/{again}/input.png"
    assert backend.storage.get(made["input_key"]) == backend.storage.get(job["input_key"]), "the same photo"
    same = ("mode", "strength", "seed", "steps", "width", "height", "prompt")
    assert {k: made["spec"][k] for k in same} == {k: job["spec"][k] for k in same}


def test_a_photo_chosen_after_reuse_replaces_it_and_remove_leaves_it_out(backend, open_app):
    job = restyle_job(backend, color=(200, 40, 40))
    at = open_app(frontend_env(backend), job=job["id"])
    at.button(key="job-reuse").click().run()
    assert_no_exception(at)
    assert not at.button(key="generate").disabled, page_text(at)

    at.button(key="reused-photo-remove").click().run()
    assert_no_exception(at)
    assert at.button(key="generate").disabled and "Upload the photo to restyle." in page_text(at)

    at.button(key="job-reuse").click().run()  # back again; then another photo is chosen
    other = png_bytes(64, 64, (30, 30, 220))
    at.file_uploader(key="photo").set_value(("blue.png", other, "image/png")).run()
    assert_no_exception(at)
    assert "from the job you reused" not in page_text(at), "the new photo replaced the job's"
    at.button(key="generate").click().run()
    again = at.query_params.get("job")
    assert again and again != job["id"], page_text(at)
    sent = backend.storage.get(manifest(backend, again)["input_key"])
    assert sent != backend.storage.get(job["input_key"]), "the photo chosen after Reuse is the one sent"


def test_a_photo_that_cannot_be_read_back_is_asked_for_again(backend, open_app):
    job = restyle_job(backend)
    backend.storage.delete(job["input_key"])
    at = open_app(frontend_env(backend), job=job["id"])
    at.button(key="job-reuse").click().run()
    assert_no_exception(at)
    assert ASK_AGAIN in page_text(at) and "from the job you reused" not in page_text(at)
    assert at.session_state["mode"] == "restyle"
    assert at.button(key="generate").disabled and "Upload the photo to restyle." in page_text(at)
