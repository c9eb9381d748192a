"""Handling results: a running picture's step, time left and preview; the job as a ZIP; reusing a job's
settings (or a picture's) and making more like it; the product picker's picture; History's filters, older
pages and delete."""

import io
import json
import uuid
import zipfile
from datetime import UTC, datetime, timedelta

import pytest
from PIL import Image, PngImagePlugin

from backend.storage import LocalStorage
from frontend import downloads, services
from frontend.jobs import load_job, recent_jobs
from tests.factories import make_lora, packshot, png_bytes
from tests.frontend.conftest import SMALL, assert_no_exception, frontend_env, offline_url, page_text, shown_images


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def stored_manifest(storage, job_id: str, statuses: list[str], product: str | None = None, **image_fields) -> dict:
    images = [{"index": i, "key": f"jobs/{job_id}/{i}.png", "seed": 5 + i, "status": s, "worker": 0, "error": None,
               "started_at": None, "finished_at": None, "progress": None, "preview_key": None, "upscale": None}
              | (image_fields if i == 0 else {}) for i, s in enumerate(statuses)]
    manifest = {"id": job_id, "created_at": "2026-01-01T10:00:00.000Z", "updated_at": "2026-01-01T10:00:05.000Z",
                "status": "running" if "running" in statuses else statuses[0], "input_key": None, "error": None,
                "spec": {"prompt": f"a kettle {job_id[-4:]}", "product": product, **SMALL,
                         "num_images": len(statuses)}, "images": images}
    storage.put(f"jobs/{job_id}/job.json", json.dumps(manifest).encode(), "application/json")
    return manifest


def test_a_running_picture_shows_its_step_the_time_left_and_its_preview(backend, open_app):
    job_id = uuid.uuid4().hex
    preview = io.BytesIO()
    Image.new("RGB", (16, 16), (40, 90, 200)).save(preview, format="JPEG")
    backend.storage.put(f"jobs/{job_id}/0_preview.jpg", preview.getvalue(), "image/jpeg")
    started = datetime.now(UTC) - timedelta(seconds=10)
    stored_manifest(backend.storage, job_id, ["running", "queued"], started_at=iso(started),
                    progress={"step": 10, "steps": 40}, preview_key=f"jobs/{job_id}/0_preview.jpg")
    at = open_app(frontend_env(backend), job=job_id)
    assert_no_exception(at)
    (bar,) = at.progress
    assert bar.text.startswith("Step 10 of 40 · about ") and bar.text.endswith(" s left"), bar.text
    left = int(bar.text.split("about ")[1].split(" s")[0])
    assert 28 <= left <= 40, "10 steps in 10 s (and a few for the page to open): the other 30 take about 30 s"
    tiles = [m.value for m in at.markdown if 'class="sr-slot ' in str(m.value)]
    assert len(tiles) == 2 and 'class="sr-preview"' in tiles[0] and "sr-preview" not in tiles[1]
    assert shown_images(at) == 0, "a preview is not a picture: no download, no upscale"


def test_the_zip_holds_every_picture_and_the_manifest(backend):
    job = backend.wait_job(backend.submit({"prompt": "a bowl", "num_images": 3, "seed": 9, **SMALL})["id"])
    view = load_job(backend.storage, job["id"])
    with zipfile.ZipFile(io.BytesIO(downloads.job_zip(backend.storage, view))) as archive:
        names = sorted(archive.namelist())
        stem = f"showroom-{job['id'][:12]}"  # no product, no style: the id alone
        assert names == ["job.json", f"{stem}-1.png", f"{stem}-2.png", f"{stem}-3.png"], names
        for img in job["images"]:
            data = archive.read(f"{stem}-{img['index'] + 1}.png")
            assert data == backend.storage.get(img["key"]), "each picture exactly as stored"
            with Image.open(io.BytesIO(data)) as png:
                assert "parameters" in png.text and f"Seed: {img['seed']}" in png.text["parameters"]
        assert json.loads(archive.read("job.json"))["id"] == job["id"]


def test_use_these_settings_fills_the_form_and_more_like_this_sends_it_again(backend, open_app):
    name = f"vase-{uuid.uuid4().hex[:6]}"
    r = backend.post("/v1/products", data={"name": name, "trigger": "qzv vase"},
                     files={"photo": ("v.png", packshot(), "image/png")})
    assert r.status_code == 201, r.text
    spec = {"product": name, "template": "studio-white", "prompt": "<product> on a shelf", "mode": "place",
            "placement": {"x": 0.67, "y": 0.55, "scale": 0.8}, "shadow": False, "steps": 3, "seed": 77,
            "width": 64, "height": 80, "num_images": 2}
    job = backend.wait_job(backend.submit(spec)["id"])
    assert job["spec"]["prompt"] == "qzv vase on a shelf"
    services.catalog.clear()
    at = open_app(frontend_env(backend), job=job["id"])
    at.button(key="job-reuse").click().run()
    assert_no_exception(at)
    form = {key: at.session_state[key] for key in ("product", "template_id", "prompt", "mode", "place_at",
                                                   "place_scale", "shadow", "steps", "seed", "width", "height",
                                                   "num_images", "aspect")}
    assert form == {"product": name, "template_id": "studio-white", "prompt": "<product> on a shelf",
                    "mode": "place", "place_at": "right", "place_scale": 0.8, "shadow": False, "steps": 3,
                    "seed": 77, "width": 64, "height": 80, "num_images": 2, "aspect": "4:5"}, form
    assert at.text_area(key="prompt").value == "<product> on a shelf" and at.number_input(key="seed").value == 77
    assert at.selectbox(key="product").value == name and at.radio(key="mode").value == "place"
    assert "The form holds the settings of the job" in page_text(at)
    assert f'<div class="sr-prompt sr-job-prompt">{name} on a shelf</div>' in page_text(at), \
        "its name, not its trigger words"

    at.button(key="job-vary").click().run()
    assert_no_exception(at)
    again = at.query_params.get("job")
    assert again and again != job["id"], page_text(at)
    made = backend.wait_job(again)["spec"]
    assert made["seed"] != 77 and made["prompt"] == "qzv vase on a shelf", "trigger words not doubled"
    same = ("product", "template", "mode", "placement", "shadow", "steps", "width", "height", "num_images")
    assert {k: made[k] for k in same} == {k: job["spec"][k] for k in same}


def add_product(backend, trigger: str, **files) -> str:
    name = f"jug-{uuid.uuid4().hex[:6]}"
    r = backend.post("/v1/products", data={"name": name, "trigger": trigger},
                     files=files or {"photo": ("j.png", packshot(), "image/png")})
    assert r.status_code == 201, r.text
    services.catalog.clear()
    return name


@pytest.fixture(scope="module")
def made_png(backend) -> tuple[str, bytes]:
    """A product with a packshot, and the second picture of a job made with it (seed 4243)."""
    name = add_product(backend, "qzv jug")
    spec = {"product": name, "prompt": "<product> by a window", "negative_prompt": "blur", "steps": 3,
            "guidance_scale": 6.5, "seed": 4242, "width": 64, "height": 80, "num_images": 2}
    job = backend.wait_job(backend.submit(spec)["id"])
    assert job["status"] == "succeeded", job
    return name, backend.storage.get(job["images"][1]["key"])


def only_chunk(png: bytes, chunk: str) -> bytes:
    """The same picture with one of its text chunks kept (as another tool would save it)."""
    info = PngImagePlugin.PngInfo()
    with Image.open(io.BytesIO(png)) as img:
        info.add_text(chunk, img.text[chunk])
        out = io.BytesIO()
        img.save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def drop_picture(at, name: str, data: bytes):
    at.file_uploader(key="reuse_png").set_value((name, data, "image/png")).run()
    assert_no_exception(at)
    return at


def form_of(at, *keys: str) -> dict:
    return {key: at.session_state[key] for key in keys}


FILLED = ("prompt", "negative", "steps", "guidance", "seed", "width", "height")


def test_a_showroom_png_dropped_on_the_create_page_fills_the_form(backend, open_app, made_png):
    name, png = made_png
    at = open_app(frontend_env(backend))
    at.slider(key="num_images").set_value(3).run()
    drop_picture(at, "jug.png", png)
    assert form_of(at, "product", "mode", "num_images", *FILLED) == {
        "product": name, "mode": "generate", "num_images": 3, "prompt": "<product> by a window",
        "negative": "blur", "steps": 3, "guidance": 6.5, "seed": 4243, "width": 64, "height": 80}, \
        "the picture's own seed; the form keeps its count; the trigger words turned back into <product>"
    assert at.text_area(key="prompt").value == "<product> by a window" and at.number_input(key="seed").value == 4243
    assert at.number_input(key="width").value == 64 and at.number_input(key="height").value == 80
    assert at.selectbox(key="product").value == name
    assert "The form holds the settings of jug.png." in page_text(at)


def test_an_a1111_png_fills_the_same_settings(backend, open_app, made_png):
    _, png = made_png
    a1111 = only_chunk(png, "parameters")
    with Image.open(io.BytesIO(a1111)) as img:
        assert "showroom" not in img.text
    at = open_app(frontend_env(backend))
    drop_picture(at, "a1111.png", a1111)
    assert form_of(at, "product", *FILLED) == {
        "product": "", "prompt": "qzv jug by a window", "negative": "blur", "steps": 3, "guidance": 6.5,
        "seed": 4243, "width": 64, "height": 80}, "no product in A1111's line: its prompt as written"
    assert at.number_input(key="steps").value == 3 and at.number_input(key="seed").value == 4243


def test_a_png_without_settings_says_why_and_leaves_the_form(backend, open_app):
    at = open_app(frontend_env(backend))
    at.text_area(key="prompt").input("my own words")
    drop_picture(at, "plain.png", png_bytes(32, 32))
    assert "This picture carries no settings" in " ".join(w.value for w in at.warning)
    assert form_of(at, "prompt", "steps", "seed") == {"prompt": "my own words", "steps": 30, "seed": None}
    drop_picture(at, "photo.jpg", png_bytes(32, 32, fmt="JPEG"))
    assert "This file is a JPEG, not a PNG: only a PNG keeps the settings" in " ".join(w.value for w in at.warning)
    assert at.file_uploader(key="reuse_png").proto.type == [".png", ".jpg", ".jpeg", ".webp"], \
        "a JPEG reaches the page and is told why, not refused by the box in Streamlit's words"


def test_the_product_picker_shows_the_chosen_products_picture(backend, open_app, made_png, tiny_model):
    name, _ = made_png
    lora = make_lora(tiny_model, seed=3)
    learnt = add_product(backend, "zqx lamp", file=("l.safetensors", lora, "application/octet-stream"))

    def beside_picker(a) -> list[list[str]]:
        """The pictures beside the picker, by their captions."""
        return [list(image.captions) for image in a.get_by_key("product-pick").image]

    at = open_app(frontend_env(backend))
    assert beside_picker(at) == [] and shown_images(at) == 0, "no product chosen: no picture"
    at.selectbox(key="product").set_value(name).run()
    assert_no_exception(at)
    # no caption: the picker names the product, and a long name wrapped onto three lines under 72 pixels
    assert beside_picker(at) == [[""]] and shown_images(at) == 1, "its packshot, beside the picker, no caption"
    at.selectbox(key="product").set_value(learnt).run()
    assert_no_exception(at)
    assert beside_picker(at) == [] and shown_images(at) == 0, "a product without a packshot: nothing"


def test_history_filters_by_product_and_status_and_pages_back(tmp_path, open_app):
    storage = LocalStorage(tmp_path)
    ids = sorted(uuid.uuid4().hex for _ in range(30))
    for n, job_id in enumerate(ids):
        stored_manifest(storage, job_id, ["failed" if n % 3 == 0 else "succeeded"], product="mug" if n % 2 else "cup")
    at = open_app({"BACKEND_URL": offline_url(), "STORAGE_URL": f"file://{tmp_path}"})
    at.switch_page("app_pages/history.py").run()
    assert_no_exception(at)

    def opened(a) -> list[str]:
        return [b.key.removeprefix("open-") for b in a.button if b.key and b.key.startswith("open-")]

    assert opened(at) == ids[::-1][:12], "the 12 newest first"
    assert at.button(key="history-newer").disabled
    at.button(key="history-more").click().run()
    assert opened(at) == ids[::-1][12:24] and "Jobs 13–24, newest first" in page_text(at)
    at.button(key="history-more").click().run()
    assert opened(at) == ids[::-1][24:] and at.button(key="history-more").disabled, "then the 6 oldest"
    at.button(key="history-newer").click().run()
    assert opened(at) == ids[::-1][12:24], "and back"

    at.pills(key="history_status").set_value("failed").run()
    assert opened(at) == [i for n, i in enumerate(ids) if n % 3 == 0][::-1], "another filter starts at the newest"
    page = recent_jobs(storage, 3, product="mug", status="succeeded")
    assert [j.id for j in page.jobs] == [i for n, i in enumerate(ids) if n % 2 and n % 3][::-1][:3] and page.before
    older = recent_jobs(storage, 50, before=page.before, product="mug", status="succeeded")
    assert [j.id for j in older.jobs] == [i for n, i in enumerate(ids) if n % 2 and n % 3][::-1][3:]
    assert older.before is None
    assert at.button(key=f"delete-{ids[0]}").disabled, "deleting needs the generator"


def test_delete_a_job_from_history_asks_first_and_removes_every_object(backend, open_app):
    job = backend.wait_job(backend.submit({"prompt": "a spoon", "num_images": 2, **SMALL})["id"])
    backend.storage.put(f"jobs/{job['id']}/extra.png", png_bytes(8, 8), "image/png")
    at = open_app(frontend_env(backend))
    at.switch_page("app_pages/history.py").run()
    at.button(key=f"delete-{job['id']}").click().run()
    assert "Delete this job and its 2 pictures?" in page_text(at)
    assert backend.storage.exists(job["images"][0]["key"]), "nothing is deleted before the confirmation"
    at.button(key=f"delete-yes-{job['id']}").click().run()
    assert_no_exception(at)
    assert backend.storage.list_files(f"jobs/{job['id']}/") == []
    assert not [b for b in at.button if b.key == f"open-{job['id']}"]



@pytest.mark.parametrize("made, asked", [(3, "**Delete this job and its 3 pictures?**"),
                                         (1, "**Delete this job and its 1 picture?**"),
                                         (0, "**Delete this job? It has no pictures.**")])
def test_deleting_a_canceled_job_from_history_counts_the_pictures_it_has(tmp_path, open_app, monkeypatch,
                                                                         made, asked):
    storage = LocalStorage(tmp_path)
    job_id = uuid.uuid4().hex
    stored_manifest(storage, job_id, ["succeeded"] * made + ["canceled"] * (15 - made))
    for index in range(made):
        storage.put(f"jobs/{job_id}/{index}.png", png_bytes(32, 32), "image/png")
    monkeypatch.setattr(services, "current_health", lambda: services.Health("online", "Online"))
    at = open_app({"BACKEND_URL": offline_url(), "STORAGE_URL": f"file://{tmp_path}"})
    at.switch_page("app_pages/history.py").run()
    assert f"{made}/15 pictures" in page_text(at)
    at.button(key=f"delete-{job_id}").click().run()
    assert_no_exception(at)
    text = page_text(at)
    assert asked in text and "15 pictures?" not in text, "the pictures that exist, not the 15 asked for"


def test_history_says_how_each_job_was_made(tmp_path, open_app):
    storage = LocalStorage(tmp_path)
    ids = sorted(uuid.uuid4().hex for _ in range(4))
    for job_id, mode in zip(ids, ("place", "restyle", "generate", None)):
        manifest = stored_manifest(storage, job_id, ["succeeded"])
        manifest["spec"] |= {"prompt": "a mug on a marble counter", "template": "marble"}
        if mode:
            manifest["spec"]["mode"] = mode
        storage.put(f"jobs/{job_id}/job.json", json.dumps(manifest).encode(), "application/json")
        storage.put(f"jobs/{job_id}/0.png", png_bytes(32, 32), "image/png")
    at = open_app({"BACKEND_URL": offline_url(), "STORAGE_URL": f"file://{tmp_path}"})
    at.switch_page("app_pages/history.py").run()
    assert_no_exception(at)
    metas = [str(m.value) for m in at.markdown if "sr-job-meta" in str(m.value)]
    words = [next((w for w in ("Product placed", "Photo restyled", "From the prompt") if w in m), None)
             for m in metas]
    assert words == ["From the prompt", "From the prompt", "Photo restyled", "Product placed"], \
        f"newest first; a spec without a mode was drawn from the prompt, as the backend's default: {metas}"
    assert prompts_shown(at) == ['<div class="sr-prompt">a mug on a marble counter</div>'] * 4, \
        "the generator off: no style names to read, the prompt as it is"


def test_a_history_card_names_the_style_before_its_words(backend, open_app):
    template = next(t for t in backend.get("/v1/catalog").json()["templates"] if "generate" in t.get("modes", []))
    styled = backend.submit({"template": template["id"], "num_images": 1} | SMALL)
    own = backend.submit({"prompt": f"a teapot by a window {uuid.uuid4().hex[:6]}", "num_images": 1} | SMALL)
    for ticket in (styled, own):
        assert backend.wait_job(ticket["id"])["status"] == "succeeded"
    at = open_app(frontend_env(backend))
    at.switch_page("app_pages/history.py").run()
    assert_no_exception(at)
    first, second = prompts_shown(at)[:2]  # newest first
    own_prompt = backend.get(f"/v1/jobs/{own['id']}").json()["spec"]["prompt"]
    assert first == f'<div class="sr-prompt">{own_prompt}</div>'
    assert second.startswith(f'<div class="sr-prompt"><b class="sr-style">{template["name"]}</b> · '), second
    assert len(second.split("</b> · ", 1)[1].removesuffix("</div>")) <= 90 - len(template["name"]) - 3

def prompts_shown(at) -> list[str]:
    return [str(m.value) for m in at.markdown if 'class="sr-prompt' in str(m.value)]  # a job's, History's


def test_a_jobs_prompt_names_its_product_not_its_trigger_words(tmp_path, open_app):
    storage = LocalStorage(tmp_path)
    record = {"name": "blue-mug", "trigger": "qzv mug", "category": "mug", "weight": 1.0, "has_lora": True,
              "packshot_key": None, "training": None}
    storage.put("products/blue-mug.json", json.dumps(record).encode(), "application/json")
    named, deleted, plain = sorted(uuid.uuid4().hex for _ in range(3))
    for job_id, product, prompt in ((named, "blue-mug", "qzv mug standing on a beach"),
                                    (deleted, "old-jug", "zqx jug on a shelf"), (plain, None, "a kettle on a hob")):
        manifest = stored_manifest(storage, job_id, ["succeeded"], product=product)
        manifest["spec"]["prompt"] = prompt  # the resolved prompt, as the backend stores it
        storage.put(f"jobs/{job_id}/job.json", json.dumps(manifest).encode(), "application/json")
    env = {"BACKEND_URL": offline_url(), "STORAGE_URL": f"file://{tmp_path}"}

    at = open_app(env, job=named)
    assert_no_exception(at)
    assert prompts_shown(at) == ['<div class="sr-prompt sr-job-prompt">blue-mug standing on a beach</div>'], \
        "the job header"
    at.switch_page("app_pages/history.py").run()
    assert_no_exception(at)
    assert prompts_shown(at) == [f'<div class="sr-prompt">{p}</div>' for p in (
        "a kettle on a hob", "zqx jug on a shelf", "blue-mug standing on a beach")], \
        "newest first; a product deleted since, and no product: the prompt as it is"
    assert "qzv" not in page_text(at)
    stored = json.loads(storage.get(f"jobs/{named}/job.json"))["spec"]["prompt"]
    assert stored == "qzv mug standing on a beach", "display only: the manifest keeps the trigger words"

    at = open_app(env, job=deleted)
    assert prompts_shown(at) == ['<div class="sr-prompt sr-job-prompt">zqx jug on a shelf</div>']


def test_history_reads_only_the_covers_of_the_page_on_screen_once(tmp_path, open_app, monkeypatch):
    storage = LocalStorage(tmp_path)
    ids = sorted(uuid.uuid4().hex for _ in range(30))
    for job_id in ids:
        stored_manifest(storage, job_id, ["succeeded", "succeeded"])
        for index in range(2):
            storage.put(f"jobs/{job_id}/{index}.png", png_bytes(32, 32), "image/png")
    read = []
    get = LocalStorage.get
    monkeypatch.setattr(LocalStorage, "get", lambda self, key: read.append(key) or get(self, key))

    def pictures_read() -> list[str]:
        found = sorted(key for key in read if key.endswith(".png"))
        read.clear()
        return found

    newest = ids[::-1]
    at = open_app({"BACKEND_URL": offline_url(), "STORAGE_URL": f"file://{tmp_path}"})
    pictures_read()
    at.switch_page("app_pages/history.py").run()
    assert_no_exception(at)
    assert pictures_read() == sorted(f"jobs/{i}/0.png" for i in newest[:12]), "one cover per job on the page"
    assert shown_images(at) == 12
    at.run()
    assert pictures_read() == [] and shown_images(at) == 12, "covers once read are kept"
    at.button(key="history-more").click().run()
    assert pictures_read() == sorted(f"jobs/{i}/0.png" for i in newest[12:24]), "only the next page's"
    at.button(key="history-newer").click().run()
    assert pictures_read() == [] and shown_images(at) == 12


def test_a_job_whose_pictures_are_gone_says_so_in_history_and_when_opened(tmp_path, open_app):
    storage = LocalStorage(tmp_path)
    gone, partly = sorted(uuid.uuid4().hex for _ in range(2))
    for job_id in (gone, partly):
        stored_manifest(storage, job_id, ["succeeded"] * 4)
    for index in (1, 3):
        storage.put(f"jobs/{partly}/{index}.png", png_bytes(32, 32), "image/png")
    at = open_app({"BACKEND_URL": offline_url(), "STORAGE_URL": f"file://{tmp_path}"})
    at.switch_page("app_pages/history.py").run()
    assert_no_exception(at)
    text = page_text(at)
    assert "0/4 pictures (4 missing)" in text and "2/4 pictures (2 missing)" in text, text
    assert shown_images(at) == 1, "the job with pictures left shows the first that is there"
    assert "Its pictures are no longer in storage" in text and ":orange-badge[Pictures missing]" in text
    assert text.count(":green-badge[Done]") == 1 and "could not be read" not in text, \
        "Done once, for the job with pictures"

    at.button(key=f"open-{gone}").click().run()
    assert_no_exception(at)
    text = page_text(at)
    assert "0 of 4 ready · 4 missing" in text and text.count("no longer in storage") == 4, text
    assert "Done" not in text and shown_images(at) == 0, "no red tiles claiming the pictures are made"


UPSCALES = ("up-", "job-upscale-all")  # the keys of a picture's Upscale 4x button and the job's Upscale all


def open_job_on(tmp_path, open_app, monkeypatch, health: services.Health, job_id: str):
    """The job's page with the generator answering /health as `health` (its pictures are read from storage)."""
    monkeypatch.setattr(services, "current_health", lambda: health)
    at = open_app({"BACKEND_URL": offline_url(), "STORAGE_URL": f"file://{tmp_path}"}, job=job_id)
    assert_no_exception(at)
    return at


@pytest.mark.parametrize("devices, waiting", [(("cpu",), "Waiting for the generator to be free"),
                                             (("cuda:0",), "Waiting for a GPU to be free")])
def test_a_queued_job_waits_for_a_gpu_only_where_there_is_one(tmp_path, open_app, monkeypatch, devices, waiting):
    job_id = uuid.uuid4().hex
    stored_manifest(LocalStorage(tmp_path), job_id, ["queued", "queued"])
    health = services.Health("online", "Online", gpus=services.count_gpus(devices), workers=1, devices=devices)
    at = open_job_on(tmp_path, open_app, monkeypatch, health, job_id)
    (why,) = [c.value for c in at.caption if c.value.startswith("Waiting for")]
    assert why == f"{waiting}: earlier work is done first (pictures, or a product it is learning).", \
        "a processor is not a GPU; a GPU box still says GPU"


def test_with_upscaling_off_a_job_says_so_once_instead_of_a_dead_button_per_picture(tmp_path, open_app, monkeypatch):
    storage = LocalStorage(tmp_path)
    job_id = uuid.uuid4().hex
    stored_manifest(storage, job_id, ["succeeded"] * 3)
    for index in range(3):
        storage.put(f"jobs/{job_id}/{index}.png", png_bytes(32, 32), "image/png")
    at = open_job_on(tmp_path, open_app, monkeypatch, services.Health("online", "Online", upscaler="off"), job_id)
    assert shown_images(at) == 3 and [b.key for b in at.download_button] == ["job-zip", "dl-0", "dl-1", "dl-2"]
    assert not [b.key for b in at.button if b.key.startswith(UPSCALES)], "no Upscale button that can only be greyed out"
    (why,) = [c for c in at.caption if "4x" in c.value]
    assert why.value == "Enlarging pictures 4x is not switched on in this Showroom.", "one short line for the owner"
    assert "UPSCALER=replicate" in why.help and "REPLICATE_API_TOKEN" in why.help and "UPSCALER=local" in why.help, \
        "whoever runs the generator is told how to switch it on, in its tooltip"

    at = open_job_on(tmp_path, open_app, monkeypatch, services.Health("online", "Online", upscaler="replicate"), job_id)
    upscales = [b for b in at.button if b.key.startswith(UPSCALES)]
    assert [b.key for b in upscales] == ["job-upscale-all", "up-0", "up-1", "up-2"]
    assert not any(b.disabled for b in upscales) and not [c for c in at.caption if "4x" in c.value]


def test_a_failed_upscale_says_so_in_a_line_and_offers_it_again(tmp_path, open_app, monkeypatch):
    """The upscaler's own words are for whoever runs it (in the tooltip); the owner reads one line, and the button
    that tries again."""
    storage = LocalStorage(tmp_path)
    job_id = uuid.uuid4().hex
    said = "mv-lab/swin2sr failed on Replicate: CUDA out of memory. Tried to allocate 2.00 GiB"
    stored_manifest(storage, job_id, ["succeeded"],
                    upscale={"key": f"jobs/{job_id}/0_x4.png", "status": "failed", "error": said})
    storage.put(f"jobs/{job_id}/0.png", png_bytes(32, 32), "image/png")
    at = open_job_on(tmp_path, open_app, monkeypatch, services.Health("online", "Online", upscaler="replicate"), job_id)
    (line,) = [c for c in at.caption if "Not enlarged" in c.value]
    assert "Upscale 4x tries again." in line.value and said not in line.value and said in line.help
    assert not [w for w in at.warning if "Replicate" in w.value], "no block of machine text under the picture"
    assert not at.button(key="up-0").disabled


def test_a_job_says_how_many_of_its_pictures_are_being_enlarged(tmp_path, open_app, monkeypatch):
    """After Upscale all, the job names what it sent, and what is done so far (each picture alone said it)."""
    storage = LocalStorage(tmp_path)
    job_id = uuid.uuid4().hex
    manifest = stored_manifest(storage, job_id, ["succeeded"] * 3)
    for index in range(3):
        storage.put(f"jobs/{job_id}/{index}.png", png_bytes(32, 32), "image/png")
    health = services.Health("online", "Online", upscaler="replicate")
    at = open_job_on(tmp_path, open_app, monkeypatch, health, job_id)
    assert not [c for c in at.caption if "Enlarging" in c.value], "nothing sent, nothing said"

    manifest["images"][0]["upscale"] = {"key": f"jobs/{job_id}/0_x4.png", "status": "running", "error": None}
    manifest["images"][1]["upscale"] = {"key": f"jobs/{job_id}/1_x4.png", "status": "queued", "error": None}
    manifest["images"][2]["upscale"] = {"key": f"jobs/{job_id}/2_x4.png", "status": "succeeded", "error": None}
    storage.put(f"jobs/{job_id}/2_x4.png", png_bytes(128, 128), "image/png")
    storage.put(f"jobs/{job_id}/job.json", json.dumps(manifest).encode(), "application/json")
    at = open_job_on(tmp_path, open_app, monkeypatch, health, job_id)
    (line,) = [c.value for c in at.caption if "Enlarging" in c.value]
    assert line.endswith("Enlarging 2 pictures 4x (1 done): each gets its 4x PNG button when it is ready."), line
