"""The name on the Add a product form: taken as typed and saved in the backend's form ("Red Bottle #1" ->
red-bottle-1, said under the field), and a product that has the name already is said before anything is sent and
replaced only when the user ticks Replace; a learnt one keeps the words and category it was learnt with."""

import random
import uuid

import pytest

from backend.contract import check_name
from frontend import services
from frontend.client import ShowroomClient
from frontend.views.product_form import stored_name
from tests.factories import make_lora, packshot
from tests.frontend.conftest import assert_no_exception, frontend_env, page_text
from tests.frontend.photos import product_photos


def products_page(open_app, backend):
    services.catalog.clear()  # products made through the API in this test are not in a cached catalog
    at = open_app(frontend_env(backend))
    at.switch_page("app_pages/products.py").run()
    assert_no_exception(at)
    return at


def record(backend, name: str) -> dict | None:
    return {p["name"]: p for p in backend.get("/v1/catalog").json()["products"]}.get(name)


def learnt_product(backend, tiny_model, name: str) -> bytes:
    """A product with a LoRA and a packshot, as the user review found it; its packshot's bytes."""
    r = backend.post("/v1/products", data={"name": name, "trigger": "zwx wine bottle", "category": "Wine Bottle",
                                           "weight": "0.8"},
                     files={"file": ("b.safetensors", make_lora(tiny_model, seed=3), "application/octet-stream"),
                            "photo": ("b.png", packshot(30, 44), "image/png")})
    assert r.status_code == 201 and r.json()["has_lora"], r.text
    return backend.storage.get(f"products/{name}.png")


def typed_like(name: str) -> str:
    """How a person types an existing name: "red-bottle-1a2b3c" -> "Red Bottle 1A2B3C"."""
    return name.replace("-", " ").title()


def test_an_existing_name_is_said_and_replaced_only_when_ticked_keeping_what_it_learnt_with(
        backend, open_app, tiny_model):
    name = f"red-bottle-{uuid.uuid4().hex[:6]}"
    picture = learnt_product(backend, tiny_model, name)
    at = products_page(open_app, backend)
    at.text_input(key="add_name").input(typed_like(name)).run()
    said = page_text(at)
    assert f"A product named {name} exists already" in said and "zwx wine bottle" in said, said
    assert "Wine Bottle" in said, "what is kept is said before the click"
    assert at.button(key="add-submit").disabled, "not replaced without the tick (a click is refused: next test)"
    assert at.button(key="add-open-existing").label == f"Open {name}"

    at.checkbox(key=f"add_replace-{name}").check().run()
    assert not at.button(key="add-submit").disabled
    at.file_uploader(key="add_photos").set_value(product_photos(1))  # a form's field: sent with the click
    at.button(key="add-submit").click().run()
    assert_no_exception(at)
    assert at.query_params.get("product") == name, page_text(at)
    replaced = record(backend, name)
    assert backend.storage.get(f"products/{name}.png") != picture, "the new photo is its picture"
    assert (replaced["trigger"], replaced["category"], replaced["weight"]) == ("zwx wine bottle", "Wine Bottle", 0.8)
    assert replaced["has_lora"], "what it learnt still answers to its words"


def test_a_product_added_elsewhere_since_the_list_was_read_is_not_replaced_unasked(backend, open_app, tiny_model):
    name = f"jar-{uuid.uuid4().hex[:6]}"
    at = products_page(open_app, backend)  # the catalog is read (and kept a minute) before the product exists
    picture = learnt_product(backend, tiny_model, name)
    at.text_input(key="add_name").input(name)
    at.file_uploader(key="add_photos").set_value(product_photos(1))
    at.button(key="add-submit").click().run()
    assert_no_exception(at)
    assert backend.storage.get(f"products/{name}.png") == picture and record(backend, name)["category"]
    assert f"A product named {name} exists already" in page_text(at), page_text(at)
    assert at.checkbox(key=f"add_replace-{name}").value is False


def test_a_name_is_taken_as_typed_and_saved_in_small_letters_and_dashes(backend, open_app):
    number = random.randrange(10**6, 10**7)
    at = products_page(open_app, backend)
    at.text_input(key="add_name").input(f"Red Bottle #{number}").run()
    assert f"Saved as **red-bottle-{number}**" in [c.value for c in at.caption], "said before the click"
    assert not at.button(key="add-submit").disabled and not at.warning
    at.file_uploader(key="add_photos").set_value(product_photos(1))
    at.button(key="add-submit").click().run()
    assert_no_exception(at)
    assert not at.error, page_text(at)
    assert at.query_params.get("product") == f"red-bottle-{number}" and record(backend, f"red-bottle-{number}")


def test_a_name_with_no_letters_or_digits_is_refused_in_words_without_asking_the_backend(
        backend, open_app, monkeypatch):
    def not_sent(self, *args, **kwargs):
        raise AssertionError("the form sent a name with nothing to save it under")

    monkeypatch.setattr(ShowroomClient, "add_product", not_sent)
    at = products_page(open_app, backend)
    at.text_input(key="add_name").input("###").run()
    assert any("A name needs at least one letter" in c.value for c in at.caption), page_text(at)
    at.file_uploader(key="add_photos").set_value(product_photos(1))
    at.button(key="add-submit").click().run()
    assert_no_exception(at)
    (shown,) = [e.value for e in at.error]
    assert "A name needs at least one letter (a to z) or digit" in shown and "got" not in shown, shown
    assert at.text_input(key="add_name").value == "###", "the form keeps what was typed"


@pytest.mark.parametrize("typed, saved", [
    ("Red Bottle #1", "red-bottle-1"),
    ("blue-mug", "blue-mug"),
    ("  Blue_Mug  ", "blue_mug"),
    ("Café Crème", "cafe-creme"),
    ("Straße 5", "strasse-5"),
    ("--Vase (tall)--", "vase-tall"),
    ("_x_", "x"),
    ("a" * 63 + " b", "a" * 63),
    ("Z" * 100, "z" * 64),
    ("###", ""),
    ("茶杯", ""),
    ("", ""),
])
def test_the_saved_name_comes_from_what_was_typed(typed, saved):
    assert stored_name(typed) == saved


@pytest.mark.parametrize("typed", ["Red Bottle #1", "é" * 80, " - _ 1", "ÅÄÖ&ÆØ", "x\n", "Ⅻ Ⅳ", "ﬁne  ﬂask"])
def test_a_saved_name_always_passes_the_backends_rule(typed):
    name = stored_name(typed)
    assert name and check_name("product", name) == name
