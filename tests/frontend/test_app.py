"""The app's pages under AppTest, against the real backend (tiny model, SeaweedFS)."""

import json
import re
import time
import uuid

from backend.storage import open_storage
from frontend import services
from tests.factories import decode_png, make_lora, png_bytes
from tests.frontend.conftest import (
    SMALL,
    assert_no_exception,
    frontend_env,
    offline_url,
    page_text,
    placeholder_tiles,
    run_until,
    shown_images,
)

BLOCKER = {"prompt": "a chair", "num_images": 16, "steps": 150, "width": 128, "height": 128, "seed": 1}


def templates_of(backend) -> list[dict]:
    catalog = backend.get("/v1/catalog")
    assert catalog.status_code == 200, catalog.text
    return catalog.json()["templates"]


def test_generate_from_a_template_fills_every_image(backend, open_app):
    template = templates_of(backend)[0]
    at = open_app(frontend_env(backend))
    assert_no_exception(at)
    assert "Generator: Online" in page_text(at)
    at.button(key=f"tpl-{template['id']}").click().run()
    assert at.text_area(key="prompt").value == template["prompt"], "the template pre-fills the prompt"
    assert at.number_input(key="steps").value == template["steps"]
    at.text_area(key="prompt").input(template["prompt"] + ", studio shot")
    at.number_input(key="steps").set_value(2)
    at.slider(key="num_images").set_value(3)
    at.number_input(key="seed").set_value(42)
    at.button(key="generate").click().run()
    assert_no_exception(at)

    job_id = at.query_params.get("job")
    assert job_id and len(job_id) == 32, at.query_params
    ready = re.search(r"(\d) of 3 ready", page_text(at))
    assert ready, page_text(at)
    # at once, one tile per image: a placeholder for each one not ready yet (the tiny model may be quick)
    assert placeholder_tiles(at) == 3 - int(ready[1]) and shown_images(at) == int(ready[1]), page_text(at)
    run_until(at, lambda a: shown_images(a) == 3 and "3 of 3 ready" in page_text(a), what="all 3 images shown")
    manifest = json.loads(backend.storage.get(f"jobs/{job_id}/job.json"))
    spec = manifest["spec"]
    assert spec["template"] == template["id"] and spec["steps"] == 2 and spec["num_images"] == 3
    assert spec["seed"] == 42 and spec["prompt"].endswith(", studio shot")
    assert not [b for b in at.button if b.key == "cancel-job"], "no cancel button once the job is over"


def test_a_job_deleted_while_its_page_follows_it_is_said_to_be_gone(backend, open_app):
    at = open_app(frontend_env(backend))
    at.text_area(key="prompt").input("a teapot")
    at.number_input(key="steps").set_value(2)
    at.slider(key="num_images").set_value(1)
    at.button(key="generate").click().run()
    job_id = at.query_params.get("job")
    assert job_id, "the job was not started: " + page_text(at)
    backend.wait_job(job_id)
    run_until(at, lambda a: shown_images(a) == 1, what="the picture shown")

    assert backend.delete(f"/v1/jobs/{job_id}").status_code == 204  # from History, or another device
    assert backend.storage.list_files(f"jobs/{job_id}/") == []
    at.run()
    assert_no_exception(at)
    assert f"No job {job_id} was found in storage" in page_text(at), "not its ticket, waiting for ever"
    assert placeholder_tiles(at) == 0 and shown_images(at) == 0


def test_a_photo_uploaded_on_the_page_is_restyled(backend, open_app):
    at = open_app(frontend_env(backend))
    at.radio(key="mode").set_value("restyle").run()
    at.text_area(key="prompt").input("a green bottle on a beach at sunset")
    at.number_input(key="steps").set_value(4)
    at.slider(key="num_images").set_value(1)
    at.file_uploader(key="photo").set_value(("bottle.jpg", png_bytes(96, 72, (20, 160, 60), fmt="JPEG"), "image/jpeg"))
    at.slider(key="strength").set_value(0.2).run()  # Generate is enabled once the page has the photo
    at.button(key="generate").click().run()
    assert "The job was not started: with a photo, steps x strength must be at least 1" in page_text(at)
    assert not at.query_params.get("job"), "a refused job leaves nothing to resume"

    at.slider(key="strength").set_value(0.5)
    at.button(key="generate").click().run()
    assert_no_exception(at)

    job_id = at.query_params.get("job")
    assert job_id, "the job was not started: " + page_text(at)
    manifest = json.loads(backend.storage.get(f"jobs/{job_id}/job.json"))
    assert manifest["input_key"] == f"jobs/{job_id}/input.png" and manifest["spec"]["strength"] == 0.5
    assert manifest["spec"]["mode"] == "restyle" and manifest["spec"].get("placement") is None
    stored = decode_png(backend.storage.get(manifest["input_key"]))
    assert stored.shape[:2] == (72, 96) and abs(stored[..., 1].mean() - 160) < 4, "the photo, as uploaded"
    run_until(at, lambda a: shown_images(a) == 2 + 1, what="the job's image shown, beside the photo and its crop")


def test_job_link_brings_back_finished_images_at_once(backend, open_app):
    job = backend.wait_job(backend.submit({"prompt": "a vase", "num_images": 2, **SMALL})["id"])
    at = open_app(frontend_env(backend), job=job["id"])
    assert_no_exception(at)
    assert shown_images(at) == 2
    assert [b.key for b in at.download_button] == ["job-zip", "dl-0", "dl-1"], \
        "the whole job as a ZIP, and each image at full resolution"


def test_job_link_to_a_pending_job_shows_placeholders_then_fills(backend, open_app, monkeypatch):
    blocker = backend.submit(BLOCKER)  # keeps both workers busy, so the job below waits
    pending = backend.submit({"prompt": "a lamp", "num_images": 2, **SMALL})
    try:
        services.health.clear()  # the queue as it is now, not as a test before saw it
        at = open_app(frontend_env(backend), job=pending["id"])
        assert_no_exception(at)
        assert shown_images(at) == 0
        assert page_text(at).count("Waiting") == 2 + 1 and placeholder_tiles(at) == 2, page_text(at)
        (why,) = [c.value for c in at.caption if c.value.startswith("Waiting for")]
        assert why.startswith("Waiting for the generator to be free: earlier work is done first (pictures, or a "
                              "product it is learning)."), \
            "the test backend runs on the processor: " + why
        busy = services.Health("online", "Online", pending=12)  # a longer queue than the job's own pictures
        monkeypatch.setattr(services, "current_health", lambda: busy)
        at.run()
        assert "12 pictures are in the queue, this job's included" in " ".join(c.value for c in at.caption)
        assert [b for b in at.button if b.key == "cancel-job"]
    finally:
        backend.post(f"/v1/jobs/{blocker['id']}/cancel")
    run_until(at, lambda a: shown_images(a) == 2, what="the pending job's images filled in")
    assert placeholder_tiles(at) == 0


def test_cancel_button_stops_the_job_and_the_header_says_so(backend, open_app):
    blocker = backend.submit(BLOCKER)  # both workers busy with its two batches: the job below waits in the queue
    job = backend.submit(BLOCKER)
    try:
        # Both its batches are taken up once both workers are free: one may still be reporting the last test's
        # picture (its object lands before its worker is free), and the header reads /health at most every 5 s.
        at = run_until(open_app(frontend_env(backend), job=job["id"]), lambda a: _queued(a) == 16, timeout=60,
                       what="only the job waiting, the blocker on both workers")
        at.button(key="cancel-job").click().run()
        assert_no_exception(at)
        assert _queued(at) == 0, ("the header's count read again, not kept from before the cancel", page_text(at))
    finally:
        backend.post(f"/v1/jobs/{blocker['id']}/cancel")
    assert backend.wait_job(job["id"], timeout=60)["status"] == "canceled"
    run_until(at, lambda a: "Canceled" in page_text(a), what="the canceled state shown")
    assert "0 of 16 ready · canceled after " in page_text(at), "not 'took': a canceled job never finished"


def test_the_header_counts_a_job_the_moment_it_is_sent(backend, open_app):
    blocker = backend.submit(BLOCKER)  # both workers busy with it: the job below stays in the queue
    try:
        at = run_until(open_app(frontend_env(backend)), lambda a: _queued(a) == 0, what="the blocker taken up")
        at.text_area(key="prompt").input("a lamp")
        at.number_input(key="steps").set_value(2)
        at.slider(key="num_images").set_value(3)
        at.button(key="generate").click().run()
        assert_no_exception(at)
        assert _queued(at) == 3, ("the header drawn after the page sent the job, not before", page_text(at))
    finally:
        backend.post(f"/v1/jobs/{blocker['id']}/cancel")


def _queued(at) -> int:
    """The header's count of images in the queue."""
    (count,) = re.findall(r"(\d+) images? in queue", page_text(at))
    return int(count)


def test_upscale_says_why_it_cannot(backend, open_app, monkeypatch):
    job = backend.wait_job(backend.submit({"prompt": "a cup", "num_images": 1, **SMALL})["id"])
    at = open_app(frontend_env(backend), job=job["id"])
    assert_no_exception(at)
    assert not [b for b in at.button if b.key == "up-0"], "/health says upscaler: off: no button that can only fail"
    assert "Enlarging pictures 4x is not switched on" in page_text(at), "the reason is in words, once for the job"

    # a health answer from before the backend restarted without its upscaler: the backend's refusal is shown
    monkeypatch.setattr(services, "current_health", lambda: services.Health("online", "Online", upscaler="replicate"))
    at.run()
    assert not at.button(key="up-0").disabled
    at.button(key="up-0").click().run()
    assert_no_exception(at)
    assert any("upscaler is off" in w.value for w in at.warning), page_text(at)


def test_a_failed_image_shows_its_reason(backend, open_app):
    job_id = uuid.uuid4().hex
    outcomes = [("succeeded", None, "10:00:07"), ("failed", "CUDA out of memory on worker 0", "10:00:09")]
    images = [{"index": i, "key": f"jobs/{job_id}/{i}.png", "seed": 3 + i, "status": status, "worker": 0,
               "error": error, "started_at": "2026-01-01T10:00:01.000Z", "finished_at": f"2026-01-01T{end}.000Z",
               "upscale": None} for i, (status, error, end) in enumerate(outcomes)]
    manifest = {"id": job_id, "created_at": "2026-01-01T10:00:00.000Z", "updated_at": "2026-01-01T12:00:00.000Z",
                "status": "failed", "spec": {"prompt": "a kettle", **SMALL, "num_images": 2}, "input_key": None,
                "error": None, "images": images}
    backend.storage.put(images[0]["key"], png_bytes(64, 64, (200, 40, 40)), "image/png")
    backend.storage.put(f"jobs/{job_id}/job.json", json.dumps(manifest).encode(), "application/json")
    at = open_app(frontend_env(backend), job=job_id)
    assert_no_exception(at)
    text = page_text(at)
    assert shown_images(at) == 1 and placeholder_tiles(at) == 1
    assert "Failed" in text and "CUDA out of memory on worker 0" in text, text
    assert "1 of 2 ready · took 9 s" in text, "the job ended with its last image, not at a later manifest write"


def test_an_upscale_waiting_its_turn_says_queued_and_one_at_work_says_upscaling(backend, open_app):
    job_id = uuid.uuid4().hex
    images = [{"index": i, "key": f"jobs/{job_id}/{i}.png", "seed": i, "status": "succeeded", "worker": 0,
               "error": None, "started_at": "2026-01-01T10:00:01.000Z", "finished_at": "2026-01-01T10:00:05.000Z",
               "upscale": {"key": f"jobs/{job_id}/{i}_x4.png", "status": status, "error": None}}
              for i, status in enumerate(("queued", "running"))]
    manifest = {"id": job_id, "created_at": "2026-01-01T10:00:00.000Z", "updated_at": "2026-01-01T10:00:06.000Z",
                "status": "succeeded", "spec": {"prompt": "a lamp", **SMALL, "num_images": 2}, "input_key": None,
                "error": None, "images": images}
    for img in images:
        backend.storage.put(img["key"], png_bytes(64, 64, (40, 40, 200)), "image/png")
    backend.storage.put(f"jobs/{job_id}/job.json", json.dumps(manifest).encode(), "application/json")
    at = open_app(frontend_env(backend), job=job_id)
    assert_no_exception(at)
    queued, running = at.button(key="up-0"), at.button(key="up-1")
    assert (queued.label, queued.disabled) == ("Upscale queued…", True) and "its turn" in queued.help
    assert (running.label, running.disabled) == ("Upscaling…", True)


def test_backend_offline_the_app_opens_and_browses_history(backend, open_app):
    job = backend.wait_job(backend.submit({"prompt": "a teapot", "num_images": 1, **SMALL})["id"])
    at = open_app(frontend_env(backend, BACKEND_URL=offline_url()))
    assert_no_exception(at)
    text = page_text(at)
    assert "Generator: Offline" in text and "generation is unavailable" in text
    assert not [b for b in at.button if b.key == "generate"]

    at.switch_page("app_pages/history.py").run()
    assert_no_exception(at)
    assert shown_images(at) >= 1, "history thumbnails come from storage"
    assert "every picture, download; Reuse" in page_text(at), "no upscaling offered by a generator that is offline"
    at.button(key=f"open-{job['id']}").click().run()
    assert_no_exception(at)
    assert at.query_params.get("job") == job["id"]
    assert shown_images(at) == 1


def test_wrong_api_key_is_explained(backend, open_app):
    at = open_app(frontend_env(backend, API_KEY="not-the-key"))
    assert_no_exception(at)
    assert "refused the API key" in page_text(at)


def test_password_gate(backend, open_app):
    at = open_app(frontend_env(backend), secrets={"APP_PASSWORD": "open sesame"})
    assert not [b for b in at.button if b.key == "generate"] and shown_images(at) == 0
    at.text_input(key="password").input("wrong")
    at.button[0].click().run()
    assert "not right" in page_text(at)
    at.text_input(key="password").input("open sesame")
    at.button[0].click().run()
    assert "Too many wrong passwords: try again in 1 s" in page_text(at), "a wrong try makes the next one wait"
    time.sleep(1.1)
    at.button[0].click().run()
    assert_no_exception(at)
    assert [b for b in at.button if b.key == "generate"]


def test_add_product_from_a_lora_then_generate_with_it(backend, open_app, tiny_model):
    at = open_app(frontend_env(backend))
    at.switch_page("app_pages/products.py").run()
    at.text_input(key="add_name").input("frontend-mug")
    at.text_input(key="add_kind").input("kitchen")
    at.text_input(key="add_trigger").input("sks mug")
    at.file_uploader(key="add_lora").set_value(("mug.safetensors", make_lora(tiny_model, seed=5),
                                                "application/octet-stream"))
    at.button(key="add-submit").click().run()
    assert_no_exception(at)
    assert at.query_params.get("product") == "frontend-mug", page_text(at)
    assert "Learnt: Showroom draws it in any scene" in page_text(at), "a LoRA of its own: it is learnt"

    at.switch_page("app_pages/create.py").run()
    at.selectbox(key="product").set_value("frontend-mug")
    at.text_area(key="prompt").input("<product> on a table")
    at.number_input(key="steps").set_value(2)
    at.slider(key="num_images").set_value(1)
    at.button(key="generate").click().run()
    job_id = at.query_params["job"]
    assert backend.wait_job(job_id)["spec"]["prompt"] == "sks mug on a table"


def test_storage_reader_matches_the_backend_layout(backend):
    """The frontend reads jobs through backend.storage with its own settings names."""
    from frontend.jobs import load_job

    env = frontend_env(backend)
    store = open_storage(env["STORAGE_URL"], endpoint_url=env["S3_ENDPOINT_URL"], access_key=env["AWS_ACCESS_KEY_ID"],
                         secret_key=env["AWS_SECRET_ACCESS_KEY"], region=env["AWS_REGION"])
    job = backend.wait_job(backend.submit({"prompt": "a pen", "num_images": 2, **SMALL})["id"])
    view = load_job(store, job["id"])
    assert view.terminal and view.done_count == 2 and [i.key for i in view.images] == [i["key"] for i in job["images"]]


def test_upscale_shows_the_4x_result_when_it_lands(make_backend, open_app):
    from tests.fake_replicate import FakeReplicate

    fake = FakeReplicate().start()
    try:
        backend = make_backend(UPSCALER="replicate", REPLICATE_API_TOKEN=fake.token, REPLICATE_BASE_URL=fake.url)
        job = backend.wait_job(backend.submit({"prompt": "a cup", "num_images": 1, **SMALL})["id"])
        at = open_app(frontend_env(backend), job=job["id"])
        assert at.button(key="up-0").label == "Upscale 4x" and not at.button(key="up-0").disabled
        at.button(key="up-0").click().run()
        assert_no_exception(at)
        run_until(at, lambda a: "upscaled 4x" in page_text(a), what="the upscaled image shown")
        assert any(b.label == "4x PNG" for b in at.get("download_button")), "a download of the 4x file"
        assert backend.storage.exists(f"jobs/{job['id']}/0_x4.png")
    finally:
        fake.stop()
