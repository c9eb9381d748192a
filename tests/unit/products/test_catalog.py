"""backend/products/catalog.py on a real LocalStorage: the shipped templates, products added, listed and read."""

import json

import pytest

from backend.contract import check_name
from backend.errors import Conflict, UnknownReference
from backend.models import Product, Template
from backend.products.catalog import TEMPLATES_FILE, Catalog, load_templates
from backend.storage import LocalStorage, ObjectMissing

LORA = b"safetensors bytes of a LoRA"


@pytest.fixture
def storage(tmp_path) -> LocalStorage:
    return LocalStorage(tmp_path / "store")


@pytest.fixture
def catalog(storage) -> Catalog:
    return Catalog(storage)


def bottle(**fields) -> Product:
    return Product(**({"name": "bottle", "trigger": "sks bottle", "category": "drinks", "weight": 0.8} | fields))


# ----- templates -----
def test_templates_file_ids_are_unique():
    ids = [t["id"] for t in json.loads(TEMPLATES_FILE.read_text())]
    assert len(ids) > 0
    assert len(ids) == len(set(ids))


def test_templates_all_load_as_templates():
    raw = json.loads(TEMPLATES_FILE.read_text())
    templates = load_templates()
    assert len(templates) == len(raw)
    assert all(isinstance(t, Template) and key == t.id for key, t in templates.items())


def test_templates_ids_are_valid_job_spec_names():
    # JobSpec.template goes through check_name: an id it refuses could never be asked for
    assert all(check_name("template", template_id) == template_id for template_id in load_templates())


def test_catalog_template_by_id(catalog):
    template_id = next(iter(load_templates()))
    assert catalog.template(template_id) is load_templates()[template_id]


def test_catalog_unknown_template_is_an_unknown_reference(catalog):
    with pytest.raises(UnknownReference) as info:
        catalog.template("no-such-template")
    assert info.value.detail == "unknown template 'no-such-template'; GET /v1/catalog lists them"
    assert info.value.status_code == 422


# ----- products -----
def test_catalog_add_product_stores_lora_and_record(catalog, storage):
    assert catalog.add_product(bottle(), LORA) == bottle()
    assert storage.get("products/bottle.safetensors") == LORA
    assert json.loads(storage.get("products/bottle.json")) == bottle().model_dump()
    assert catalog.lora_exists("bottle") is True


def test_catalog_add_product_writes_the_lora_before_the_record(tmp_path):
    class Recording(LocalStorage):
        def __init__(self, root):
            super().__init__(root)
            self.puts = []

        def put(self, key, data, content_type="application/octet-stream"):
            self.puts.append((key, content_type))
            super().put(key, data, content_type)

    storage = Recording(tmp_path)
    Catalog(storage).add_product(bottle(), LORA)
    assert storage.puts == [("products/bottle.safetensors", "application/octet-stream"),
                            ("products/bottle.json", "application/json")]


def test_catalog_product_reads_back_what_was_added(catalog):
    catalog.add_product(bottle(), LORA)
    assert catalog.product("bottle") == bottle()


def test_catalog_add_product_again_replaces_it(catalog):
    catalog.add_product(bottle(), LORA)
    catalog.add_product(bottle(trigger="sks green bottle", weight=1.2), b"new weights")
    assert (catalog.product("bottle").trigger, catalog.product("bottle").weight) == ("sks green bottle", 1.2)
    assert [p.name for p in catalog.products()] == ["bottle"]


class CaseInsensitiveStorage(LocalStorage):
    """A file:// store on a case-insensitive, case-preserving disk (macOS, Windows): Bottle.json and
    bottle.json are one file, listed under the name it was created with."""

    def _path(self, key):
        path = super()._path(key)
        if path.parent.is_dir():
            return next((p for p in path.parent.iterdir() if p.name.lower() == path.name.lower()), path)
        return path


@pytest.mark.parametrize("make_storage", [LocalStorage, CaseInsensitiveStorage])
def test_a_name_that_differs_only_in_case_is_refused_not_merged(tmp_path, make_storage):
    catalog = Catalog(make_storage(tmp_path))
    catalog.add_product(bottle(name="Bottle"), LORA)
    with pytest.raises(Conflict, match="a product named 'Bottle' exists already"):
        catalog.add_product(bottle(name="bottle", trigger="zwx flask"), packshot=b"png")
    (kept,) = catalog.products()
    assert (kept.name, kept.trigger, kept.has_lora) == ("Bottle", bottle().trigger, True), "Bottle as it was"
    assert catalog.add_product(bottle(name="Bottle", weight=0.8)).weight == 0.8, "its own name still replaces it"


def test_catalog_products_lists_all_sorted_by_name(catalog):
    for name in ("watch", "bottle", "shoe"):
        catalog.add_product(bottle(name=name, trigger=f"sks {name}"), LORA)
    assert [p.name for p in catalog.products()] == ["bottle", "shoe", "watch"]
    assert catalog.products()[1] == bottle(name="shoe", trigger="sks shoe")


def test_catalog_products_empty_store_is_empty(catalog):
    assert catalog.products() == []


def test_catalog_products_ignores_non_record_files(catalog, storage):
    catalog.add_product(bottle(), LORA)
    storage.put("products/orphan.safetensors", LORA)
    storage.put("products/orphan.png", b"\x89PNG")
    assert [p.name for p in catalog.products()] == ["bottle"]


def test_catalog_lora_exists_is_false_for_an_unknown_name(catalog):
    assert catalog.lora_exists("ghost") is False


def test_catalog_unknown_product_is_an_unknown_reference(catalog):
    with pytest.raises(UnknownReference) as info:
        catalog.product("ghost")
    assert info.value.detail == "unknown product 'ghost'; add it with POST /v1/products"


@pytest.mark.parametrize("record", [b"{not json", b'{"name": "broken"}', b"[]", b""])
def test_catalog_unreadable_product_record_is_an_unknown_reference(catalog, storage, record):
    storage.put("products/broken.json", record)
    with pytest.raises(UnknownReference) as info:
        catalog.product("broken")
    assert info.value.detail == "product 'broken' has an unreadable record; add it again with POST /v1/products"


def test_catalog_products_skips_unreadable_records(catalog, storage, caplog):
    catalog.add_product(bottle(), LORA)
    storage.put("products/broken.json", b"{not json")
    storage.put("products/half.json", b'{"name": "half"}')
    with caplog.at_level("WARNING", logger="showroom.catalog"):
        assert [p.name for p in catalog.products()] == ["bottle"]
    assert "products/broken.json" in caplog.text and "products/half.json" in caplog.text


def test_catalog_products_skips_a_record_deleted_while_listing(tmp_path):
    class Racing(LocalStorage):
        def get(self, key):
            if key == "products/gone.json":
                raise ObjectMissing(key)
            return super().get(key)

    storage = Racing(tmp_path)
    catalog = Catalog(storage)
    catalog.add_product(bottle(), LORA)
    storage.put("products/gone.json", bottle(name="gone").model_dump_json().encode())
    assert [p.name for p in catalog.products()] == ["bottle"]


def test_an_update_racing_a_delete_does_not_bring_the_product_back(tmp_path):
    """A training's "has_lora" landing as the product is deleted: the record stays deleted."""
    class DeletedAfterRead(LocalStorage):
        def get_versioned(self, key):
            read = super().get_versioned(key)
            if key == "products/bottle.json" and not self.raced:
                self.raced = True
                Catalog(LocalStorage(tmp_path)).delete("bottle")  # the delete, between the read and the write
            return read

    storage = DeletedAfterRead(tmp_path)
    storage.raced = False
    catalog = Catalog(storage)
    catalog.add_product(bottle())
    with pytest.raises(UnknownReference, match="unknown product 'bottle'"):
        catalog.update("bottle", has_lora=True)
    assert storage.raced and not storage.exists("products/bottle.json"), "the deleted product came back"


def test_an_update_reads_again_over_a_change_made_meanwhile(tmp_path):
    class ChangedAfterRead(LocalStorage):
        def get_versioned(self, key):
            read = super().get_versioned(key)
            if not self.raced:
                self.raced = True
                Catalog(LocalStorage(tmp_path)).update("bottle", category="kitchen")
            return read

    storage = ChangedAfterRead(tmp_path)
    storage.raced = False
    catalog = Catalog(storage)
    catalog.add_product(bottle())
    updated = catalog.update("bottle", training="t1")
    assert (updated.category, updated.training) == ("kitchen", "t1")
    assert (catalog.product("bottle").category, catalog.product("bottle").training) == ("kitchen", "t1")


def test_a_delete_cut_short_by_storage_is_finished_by_its_retry(tmp_path):
    """DELETE /v1/products/{name} whose LoRA could not be removed (503: storage failed after the record went):
    the client's retry must remove what is left, not answer 404 and leave the LoRA usable by name in `loras`."""
    from backend.storage import StorageError

    class Outage(LocalStorage):
        down_for = ()

        def delete(self, key):
            if key.endswith(self.down_for):
                raise StorageError("connection refused")
            super().delete(key)

    storage = Outage(tmp_path)
    catalog = Catalog(storage)
    catalog.add_product(bottle(), LORA, packshot=b"png")
    storage.down_for = (".safetensors",)
    with pytest.raises(StorageError):
        catalog.delete("bottle")
    storage.down_for = ()
    try:
        catalog.delete("bottle")  # the retry
    except UnknownReference:
        pass
    assert not catalog.lora_exists("bottle"), "the deleted product's LoRA is still usable by name"
    assert storage.list_files("products/") == []
