"""The Products page under AppTest against the real backend (tiny model, the "not white" segmenter, SeaweedFS):
a product from photos, taught from them with a progress bar, checked, refused in words, deleted."""

import json
import uuid

import pytest

from backend.contract import product_key, training_key
from backend.storage import LocalStorage, StorageError
from frontend import services
from frontend.client import BackendError, ShowroomClient
from frontend.trainings import RARE_TOKENS, estimate_minutes, suggest_trigger, training_view
from tests.factories import packshot, png_bytes
from tests.frontend.conftest import assert_no_exception, frontend_env, offline_url, page_text, run_until
from tests.frontend.photos import product_photos
from tests.frontend.test_scroll import scroll_targets


def unique(word: str) -> str:
    return f"{word}-{uuid.uuid4().hex[:6]}"


def products_page(open_app, backend, **query):
    services.catalog.clear()  # products made through the API in this test are not in a cached catalog
    at = open_app(frontend_env(backend))
    for name, value in query.items():
        at.query_params[name] = value
    at.switch_page("app_pages/products.py").run()
    assert_no_exception(at)
    return at


def add(at, name: str, photos: list, kind: str | None = None):
    at.text_input(key="add_name").input(name)
    if kind:
        at.text_input(key="add_kind").input(kind)
    at.file_uploader(key="add_photos").set_value(photos)
    at.button(key="add-submit").click().run()
    assert_no_exception(at)
    return at


def page_text_of(element) -> str:
    """The text of the markdown and captions inside one container."""
    return " ".join(str(e.value) for e in (*element.markdown, *element.caption))


def captions(at) -> list[str]:
    return [caption for image in at.image for caption in image.captions]


def card_pictures(at, name: str) -> int:
    """Pictures on the product's card in the list."""
    return len(at.get_by_key(f"product-{name}").image)


def record(backend, name: str) -> dict | None:
    return {p["name"]: p for p in backend.get("/v1/catalog").json()["products"]}.get(name)


def test_add_a_product_from_photos_shows_its_cutout(backend, open_app):
    name = unique("teapot")
    at = add(products_page(open_app, backend), name, product_photos(3), kind="teapot")
    assert at.query_params.get("product") == name, page_text(at)
    assert "Its cut-out: placed exactly as it is" in captions(at), "the packshot, cut out by the backend"
    assert "Ready to place exactly as it is" in page_text(at)
    product = record(backend, name)
    assert product["packshot_key"] == f"products/{name}.png" and not product["has_lora"]
    assert product["trigger"] == suggest_trigger(name, "teapot") and product["trigger"].endswith(" teapot")
    assert product["trigger"].split()[0] in RARE_TOKENS, "a rare word, chosen for the user"
    assert at.button(key="teach").label == "Teach Showroom this product"
    notes = [caption.value for caption in at.caption]
    assert any(n.startswith("Takes about ") and "minute" in n for n in notes), notes
    assert card_pictures(at, name) == 1, "its card in the list shows its picture"


def test_teaching_shows_progress_then_the_learnt_product_and_its_check(backend, open_app):
    name = unique("jug")
    at = add(products_page(open_app, backend), name, product_photos(4), kind="jug")
    at.number_input(key="teach_steps").set_value(30)
    at.button(key="teach").click().run()
    assert_no_exception(at)
    training_id = record(backend, name)["training"]
    assert training_id, page_text(at)
    assert len(at.progress) == 1 and "Teach Showroom" not in page_text(at), "a progress bar, not the button"
    # the test backend runs on the processor
    assert at.progress[0].text.startswith(("Waiting for the generator", "Learning: step")), at.progress[0].text
    assert scroll_targets(at) == [".st-key-product-open"], "the bar on screen, not above it beside the list"

    reloaded = products_page(open_app, backend, product=name)  # another tab, or a reload: the bar is back
    assert reloaded.progress or "Showroom has learnt" in page_text(reloaded), page_text(reloaded)
    seen_steps = set()

    def learnt(a) -> bool:
        seen_steps.update(p.text for p in a.progress)
        return "Showroom has learnt" in page_text(a)

    # well inside the catalog's 60 s cache: the page must not wait for it to learn that the product has learnt
    run_until(at, learnt, timeout=45, what="the training finished")
    assert any("Learning: step" in text and " of 30" in text for text in seen_steps), seen_steps
    assert "Learnt: Showroom draws it in any scene" in page_text(at)
    assert record(backend, name)["has_lora"]
    assert card_pictures(at, name) == 1, "the product with its picture"
    assert "It found your product in 4 of the 4 photos" in " ".join(c.value for c in at.caption), page_text(at)
    learnt_check = json.loads(backend.storage.get(f"trainings/{training_id}/job.json"))["check_job"]
    assert learnt_check and "Below: four test pictures" in page_text(at)
    run_until(at, lambda a: "4 of 4 ready" in page_text(a), timeout=120, what="the test pictures made unasked")

    at.button(key="check").click().run()
    assert_no_exception(at)
    check_id = at.query_params.get("check")
    assert check_id and check_id != learnt_check, page_text(at)
    run_until(at, lambda a: "4 of 4 ready" in page_text(a), timeout=120, what="the 4 test pictures")
    assert "Your product" in captions(at), "the cut-out beside the test pictures"
    spec = json.loads(backend.storage.get(f"jobs/{check_id}/job.json"))["spec"]
    assert (spec["product"], spec["template"], spec["num_images"]) == (name, "studio-white", 4)

    # History tells the pictures made unasked from the owner's own (the check asked for above)
    at.switch_page("app_pages/history.py").run()
    at.selectbox(key="history_product").set_value(name).run()
    assert_no_exception(at)
    cards = {job: page_text_of(at.get_by_key(f"job-{job}")) for job in (learnt_check, check_id)}
    assert "Test pictures, made when Showroom learnt it" in cards[learnt_check], cards
    assert "Test pictures" not in cards[check_id], cards

    # Taught again: while it learns (and once stopped) the product shows the test pictures of the LoRA it keeps
    again = products_page(open_app, backend, product=name)
    assert any(c.value.endswith(", at the speed it learnt your last product.") for c in again.caption), \
        "the time measured on this box, not the table's guess"
    again.file_uploader(key="teach_upload").set_value(product_photos(2)).run()
    again.number_input(key="teach_steps").set_value(5000)
    again.button(key="teach").click().run()
    assert_no_exception(again)
    second = record(backend, name)["training"]
    assert second != training_id and again.button(key="stop-training").label == "Stop learning", page_text(again)
    assert json.loads(backend.storage.get(training_key(second)))["earlier_check_job"] == learnt_check
    reloaded = products_page(open_app, backend, product=name)
    assert reloaded.progress and "4 of 4 ready" in page_text(reloaded), page_text(reloaded)
    reloaded.button(key="stop-training").click().run()
    assert "You stopped the learning" in page_text(reloaded) and "4 of 4 ready" in page_text(reloaded)


def test_stop_learning_ends_the_training_and_leaves_the_product_as_it_was(backend, open_app):
    name = unique("lamp")
    at = add(products_page(open_app, backend), name, product_photos(2), kind="lamp")
    at.number_input(key="teach_steps").set_value(5000)
    at.button(key="teach").click().run()
    training_id = record(backend, name)["training"]
    assert at.button(key="stop-training").label == "Stop learning", page_text(at)
    assert "· waiting to learn" in page_text(at) or "· learning now" in page_text(at), "its card in the list too"
    at.button(key="stop-training").click().run()
    assert_no_exception(at)
    assert "You stopped the learning: the product is as it was." in page_text(at), page_text(at)
    assert "· waiting to learn" not in page_text(at) and "· learning now" not in page_text(at)
    assert not at.progress and at.button(key="teach").label == "Teach Showroom this product", "taught again at will"
    manifest = json.loads(backend.storage.get(f"trainings/{training_id}/job.json"))
    assert manifest["status"] == "canceled" and not record(backend, name)["has_lora"]


def test_teaching_says_before_the_click_when_it_has_too_few_or_too_many_photos(backend, open_app):
    name = unique("cup")
    at = add(products_page(open_app, backend), name, product_photos(1))
    assert "Its cut-out: placed exactly as it is" in captions(at), "one photo is enough for a picture"
    assert at.button(key="teach").disabled, "not a click that can only fail"
    assert "One photo is not enough to learn it from: add at least 1 more" in page_text(at), page_text(at)
    # a later visit has none of the photos it was added with: it says so before the click
    later = products_page(open_app, backend, product=name)
    assert "Drop 2 to 40 photos of it above to teach it." in page_text(later) and later.button(key="teach").disabled
    later.file_uploader(key="teach_upload").set_value(product_photos(41)).run()
    assert "At most 40 photos are learnt from: remove 1." in page_text(later) and later.button(key="teach").disabled
    assert record(backend, name)["training"] is None and not later.progress


def test_a_photo_with_no_product_is_refused_in_words_and_the_form_keeps_what_was_typed(backend, open_app):
    name = unique("ghost")
    at = add(products_page(open_app, backend), name, [("white.png", png_bytes(64, 64, (255, 255, 255)),
                                                       "image/png")], kind="vase")
    shown = " ".join(e.value for e in at.error)
    assert f"{name} was not added" in shown and "No product was found in the photo" in shown, page_text(at)
    assert at.text_input(key="add_name").value == name and at.text_input(key="add_kind").value == "vase"
    assert record(backend, name) is None

    at.file_uploader(key="add_photos").set_value([("notes.txt", b"not a photo", "text/plain")])
    at.button(key="add-submit").click().run()
    assert "“notes.txt” is not a photo Showroom can read" in " ".join(e.value for e in at.error)


def test_a_backend_without_a_background_remover_refuses_a_product_in_plain_words(backend, open_app, monkeypatch):
    detail = ("the background remover could not be opened (BG_REMOVAL_MODEL='birefnet-general': "
              "HTTPSConnectionPool(host='github.com', port=443): Max retries exceeded)")

    def unavailable(self, *args, **kwargs):  # the backend's own 503 when rembg's model cannot be opened
        raise BackendError(detail, 503)

    monkeypatch.setattr(ShowroomClient, "add_product", unavailable)
    name = unique("jar")
    at = add(products_page(open_app, backend), name, product_photos(1), kind="jar")
    (shown,) = [e.value for e in at.error]
    assert f"{name} was not added" in shown and "cannot cut products out right now" in shown, shown
    assert "transparent" in shown, "what the shop owner can do meanwhile"
    assert "BG_REMOVAL_MODEL" not in shown and "HTTPSConnectionPool" not in shown, "the operator's words, not theirs"
    assert [c.value for c in at.code] == [detail], "what the backend said, under an expander, for whoever runs it"
    assert at.text_input(key="add_name").value == name, "the form keeps what was typed"


def test_delete_a_product_asks_first(backend, open_app):
    name = unique("lamp")
    r = backend.post("/v1/products", data={"name": name, "trigger": "zwx lamp"},
                     files={"photo": ("l.png", packshot(), "image/png")})
    assert r.status_code == 201, r.text
    at = products_page(open_app, backend)
    at.button(key=f"delete-product-{name}").click().run()
    assert f"Delete {name}?" in page_text(at) and backend.storage.exists(f"products/{name}.json")
    at.button(key=f"delete-product-no-{name}").click().run()
    assert f"Delete {name}?" not in page_text(at) and backend.storage.exists(f"products/{name}.json")

    at.button(key=f"delete-product-{name}").click().run()
    at.button(key=f"delete-product-yes-{name}").click().run()
    assert_no_exception(at)
    assert not backend.storage.exists(f"products/{name}.json") and not backend.storage.exists(f"products/{name}.png")
    assert not [b for b in at.button if b.key == f"delete-product-{name}"], "gone from the list"


def test_the_trigger_words_are_a_rare_word_and_what_the_product_is():
    assert suggest_trigger("blue-mug", "Mug") == suggest_trigger("blue-mug", "mug")
    assert suggest_trigger("blue-mug", None).endswith(" blue mug")
    assert len({suggest_trigger(f"p{i}", "mug").split()[0] for i in range(40)}) > 3, "not one word for all"


@pytest.mark.parametrize("devices, minutes", [(("cuda:0",), 6), (("cpu",), 80), (("cpu", "cuda:1"), 6), ((), 6)])
def test_the_teaching_time_is_estimated_from_steps_and_the_device(devices, minutes):
    assert estimate_minutes(800, devices) == minutes


def test_the_teaching_time_of_an_sdxl_model_is_longer():
    assert estimate_minutes(800, ("cuda:0",), native_size=1024) == 18, "three SD 1.x steps' worth each"
    assert estimate_minutes(800, ("cuda:0",), native_size=512) == estimate_minutes(800, ("cuda:0",), 64) == 6


def test_the_time_left_comes_from_the_measured_speed():
    manifest = {"id": "t", "product": "p", "status": "running", "progress": {"step": 20, "steps": 100},
                "created_at": "2026-01-01T10:00:00Z", "updated_at": "2026-01-01T10:00:40Z", "loss": 0.1}
    view = training_view(manifest)
    assert view.fraction == 0.2 and view.eta_s() == 160, "20 steps in 40 s: 80 steps left take 160 s"
    assert view.eta_s(since=(10, "2026-01-01T10:00:30Z")) == 80, "measured from where the page first saw it"
    assert training_view(manifest | {"status": "queued"}).eta_s() is None


@pytest.mark.parametrize("devices, waiting", [(("cpu",), "Waiting for the generator to be free"),
                                             (("cuda:0",), "Waiting for a GPU to be free")])
def test_a_queued_training_waits_for_a_gpu_only_where_there_is_one(tmp_path, open_app, monkeypatch, devices, waiting):
    storage = LocalStorage(tmp_path)
    record = {"name": "tin-box", "trigger": "zwx box", "category": "box", "weight": 1.0, "has_lora": False,
              "packshot_key": None, "training": "t1"}
    storage.put(product_key("tin-box"), json.dumps(record).encode(), "application/json")
    manifest = {"id": "t1", "product": "tin-box", "status": "queued", "progress": {"step": 0, "steps": 800},
                "created_at": "2026-01-01T10:00:00Z", "updated_at": "2026-01-01T10:00:00Z"}
    storage.put(training_key("t1"), json.dumps(manifest).encode(), "application/json")
    health = services.Health("online", "Online", gpus=services.count_gpus(devices), workers=1, devices=devices)
    monkeypatch.setattr(services, "current_health", lambda: health)
    at = open_app({"BACKEND_URL": offline_url(), "STORAGE_URL": f"file://{tmp_path}"})
    at.query_params["product"] = "tin-box"
    at.switch_page("app_pages/products.py").run()
    assert_no_exception(at)
    assert [bar.text for bar in at.progress] == [waiting], "a processor is not a GPU; a GPU box still says GPU"


def test_a_product_without_a_packshot_shows_the_newest_picture_made_with_it(backend, open_app, tiny_model):
    from tests.factories import make_lora

    name = unique("scarf")
    r = backend.post("/v1/products", data={"name": name, "trigger": "zqv scarf"},
                     files={"file": ("s.safetensors", make_lora(tiny_model, seed=9), "application/octet-stream")})
    assert r.status_code == 201, r.text
    services.pictures_by_product.clear()
    at = products_page(open_app, backend)
    assert card_pictures(at, name) == 0 and "No picture" in page_text(at), "nothing made with it yet"
    job = backend.wait_job(backend.submit({"product": name, "prompt": "<product> on a hook", "num_images": 1,
                                           "steps": 2, "width": 64, "height": 64})["id"])
    assert job["status"] == "succeeded", job
    services.pictures_by_product.clear()
    at = products_page(open_app, backend)
    assert card_pictures(at, name) == 1, "the picture made with it stands in for a packshot"
    assert "Made with it" in captions(at)


def test_an_added_product_leads_to_the_create_page_with_it_chosen_and_placed(backend, open_app):
    name = unique("jug")
    at = add(products_page(open_app, backend), name, product_photos(2), kind="jug")
    assert at.query_params.get("product") == name, page_text(at)
    at.button(key="make-pictures").click().run()
    assert_no_exception(at)
    assert at.selectbox(key="product").value == name, "the Create page opens with the product chosen"
    assert at.radio(key="mode").value == "place", "not learnt yet: its photo is placed as it is"
    assert f"{name}'s cut-out: kept pixel for pixel" in captions(at) and not at.button(key="generate").disabled


def test_a_link_to_a_product_deleted_since_says_so_and_offers_the_form(backend, open_app, monkeypatch):
    name = unique("vase")
    r = backend.post("/v1/products", data={"name": name, "trigger": "zqv vase"},
                     files={"photo": ("v.png", packshot(), "image/png")})
    assert r.status_code == 201, r.text
    assert backend.delete(f"/v1/products/{name}").status_code == 204
    at = products_page(open_app, backend, product=name)
    said = " ".join(i.value for i in at.info)
    assert f"**There is no product named {name} now**: it may have been deleted." in said, page_text(at)
    assert "open_product" not in at.session_state, "the Products page opened later shows the form alone"
    assert at.text_input(key="add_name"), "the form, to add it again"

    def unreadable():
        raise StorageError("storage is down")

    monkeypatch.setattr(services, "product_records", unreadable)
    at.query_params["product"] = name
    at.run()
    assert not at.info and "cannot be read right now" in page_text(at), "an unread list proves nothing gone"
