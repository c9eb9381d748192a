"""The photos a product is added with are kept with it (products/<name>/photos/), so that after a reload, or on
another day, Showroom is taught the product at once, without finding and dropping them again."""

import json

from backend.contract import product_photo_key, training_key
from tests.frontend.conftest import assert_no_exception, page_text
from tests.frontend.photos import product_photos
from tests.frontend.test_products import add, products_page, record, unique


def kept_training_photos(backend, training_id: str) -> list[str]:
    return [key for key in backend.storage.list_files(f"trainings/{training_id}/") if key.endswith(".png")]


def test_after_a_reload_the_product_is_taught_from_the_photos_it_was_added_with(backend, open_app):
    name = unique("kettle")
    photos = product_photos(3)
    add(products_page(open_app, backend), name, photos, kind="kettle")
    assert [backend.storage.exists(product_photo_key(name, n)) for n in range(4)] == [True, True, True, False]

    later = products_page(open_app, backend, product=name)  # a reload: nothing of the upload is in the session
    assert "Learns from the 3 photos you added it with" in page_text(later), page_text(later)
    assert "Drop 2 to 40 photos" not in page_text(later)
    assert sum(len(image.value) for image in later.get_by_key("product-open").image) >= 3, "their thumbnails"
    assert not later.button(key="teach").disabled, "taught at once, nothing to upload"
    later.number_input(key="teach_steps").set_value(5000)  # stopped below, long before it ends
    later.button(key="teach").click().run()
    assert_no_exception(later)
    training_id = record(backend, name)["training"]
    assert training_id, page_text(later)
    try:
        assert len(kept_training_photos(backend, training_id)) == 3, "the kept photos, sent as its `photos`"
        assert json.loads(backend.storage.get(training_key(training_id)))["photos"] == 3
        assert backend.storage.get(f"trainings/{training_id}/2.png") == backend.storage.get(
            product_photo_key(name, 2)), "each as it was kept (the backend normalises a normalised PNG to itself)"
    finally:
        backend.post(f"/v1/trainings/{training_id}/cancel")


def test_photos_dropped_to_teach_replace_the_kept_ones_unless_added_to_them(backend, open_app):
    name = unique("ladle")
    add(products_page(open_app, backend), name, product_photos(3))
    later = products_page(open_app, backend, product=name)
    later.file_uploader(key="teach_upload").set_value(product_photos(2, size=72)).run()
    assert "Learns from the 3 photos" not in page_text(later) and not later.button(key="teach").disabled
    later.checkbox(key="teach_with_added").check().run()
    later.number_input(key="teach_steps").set_value(5000)
    later.button(key="teach").click().run()
    assert_no_exception(later)
    training_id = record(backend, name)["training"]
    try:
        assert len(kept_training_photos(backend, training_id)) == 5, "the 2 dropped and the 3 it was added with"
    finally:
        backend.post(f"/v1/trainings/{training_id}/cancel")

    again = products_page(open_app, backend, product=name)
    again.file_uploader(key="teach_upload").set_value(product_photos(2, size=72)).run()
    again.button(key="teach").click().run()
    assert_no_exception(again)
    second = record(backend, name)["training"]
    try:
        assert second != training_id and len(kept_training_photos(backend, second)) == 2, "only the dropped ones"
    finally:
        backend.post(f"/v1/trainings/{second}/cancel")
