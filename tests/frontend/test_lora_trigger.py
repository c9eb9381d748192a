"""A product added from a LoRA made elsewhere takes the trigger words its file names: a rare word chosen for it
would never call up what the LoRA learnt. A file that names none is refused until the words are typed."""

import json
import uuid

from backend.lora.safetensors_file import read_safetensors, write_safetensors
from frontend import services
from frontend.trainings import lora_trigger
from tests.factories import make_lora
from tests.frontend.conftest import SMALL, assert_no_exception, frontend_env, page_text
from tests.frontend.test_scroll import scroll_targets


def with_metadata(lora: bytes, metadata: dict[str, str]) -> bytes:
    tensors, _ = read_safetensors(lora)
    return write_safetensors(tensors, metadata)


def test_the_trigger_is_read_from_the_model_spec_else_the_most_counted_caption_tag(tiny_model):
    lora = make_lora(tiny_model, seed=7)
    assert lora_trigger(with_metadata(lora, {"modelspec.trigger_phrase": " qwz teapot "})) == "qwz teapot"
    tags = {"10_teapot": {"qwz teapot": 24, "white background": 9}, "5_more": {"on a table": 30, "qwz teapot": 12}}
    assert lora_trigger(with_metadata(lora, {"ss_tag_frequency": json.dumps(tags)})) == "qwz teapot"
    assert lora_trigger(with_metadata(lora, {"format": "pt"})) is None
    assert lora_trigger(with_metadata(lora, {"ss_tag_frequency": "not json"})) is None
    assert lora_trigger(with_metadata(lora, {"ss_tag_frequency": json.dumps({"a": {"x": "many"}})})) is None
    assert lora_trigger(b"PK\x03\x04 a pickle in a zip") is None


def add_from_lora(open_app, backend, name: str, lora: bytes):
    services.catalog.clear()
    at = open_app(frontend_env(backend))
    at.switch_page("app_pages/products.py").run()
    at.text_input(key="add_name").input(name)
    at.file_uploader(key="add_lora").set_value((f"{name}.safetensors", lora, "application/octet-stream"))
    at.button(key="add-submit").click().run()
    assert_no_exception(at)
    return at


def test_a_lora_that_names_its_trigger_is_added_under_it(backend, open_app, tiny_model):
    name = f"teapot-{uuid.uuid4().hex[:6]}"
    lora = with_metadata(make_lora(tiny_model, seed=7), {"modelspec.trigger_phrase": "qwz teapot"})
    at = add_from_lora(open_app, backend, name, lora)
    assert at.query_params.get("product") == name, page_text(at)
    assert json.loads(backend.storage.get(f"products/{name}.json"))["trigger"] == "qwz teapot"
    assert "No picture yet" in page_text(at), "no cut-out, nothing made with it yet"
    assert [e.label for e in at.expander if e.label.startswith("Teach")] == ["Teach it from your own photos instead"], \
        "never taught here: not 'again'"
    backend.wait_job(backend.submit({"prompt": "<product> on a table", "product": name, "num_images": 1,
                                     **SMALL})["id"])
    services.pictures_by_product.clear()
    at.run()
    made = [c for image in at.get_by_key("product-summary").image for c in image.captions]
    assert made == ["Made with it"], "open, as on its card in the list (it said 'No picture yet' beside it)"


def test_a_file_that_is_no_lora_is_refused_for_that_whatever_the_words(backend, open_app):
    """Not first asked for its trigger words, which could not make it work."""
    name = f"junk-{uuid.uuid4().hex[:6]}"
    at = add_from_lora(open_app, backend, name, b"just thirty bytes of plain text")
    shown = page_text(at)
    assert "is not a LoRA Showroom can read" in shown and "does not say which words" not in shown, shown
    assert not backend.storage.exists(f"products/{name}.json")


def test_a_lora_that_names_no_trigger_is_not_added_without_one(backend, open_app, tiny_model):
    name = f"vase-{uuid.uuid4().hex[:6]}"
    at = add_from_lora(open_app, backend, name, make_lora(tiny_model, seed=8))
    assert "does not say which words call its product up" in page_text(at)
    assert at.get_by_key("add-refused").error, "the refusal in the part brought into sight"
    assert scroll_targets(at) == [".st-key-add-refused"], "under the form it was below the screen, unseen"
    assert not backend.storage.exists(f"products/{name}.json"), "nothing sent: a chosen word would call up nothing"
