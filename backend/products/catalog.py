"""Products live in storage (so an upload is usable at once, by every worker); templates ship with the code."""

import json
import logging
from functools import lru_cache
from pathlib import Path

from backend.contract import (
    lora_key,
    packshot_key,
    product_folder,
    product_key,
    product_photo_key,
    product_photos_prefix,
)
from backend.errors import Conflict, UnknownReference
from backend.models import Product, Template
from backend.storage import ObjectMissing, Storage, WriteConflict

log = logging.getLogger("showroom.catalog")
TEMPLATES_FILE = Path(__file__).with_name("templates.json")


@lru_cache
def load_templates() -> dict[str, Template]:
    templates = [Template(**t) for t in json.loads(TEMPLATES_FILE.read_text())]
    return {t.id: t for t in templates}


class Catalog:
    def __init__(self, storage: Storage):
        self.storage = storage
        self.reader = storage.responsive()  # reads answer a request: a hung store fails them in seconds

    @property
    def templates(self) -> dict[str, Template]:
        return load_templates()

    def template(self, template_id: str) -> Template:
        try:
            return self.templates[template_id]
        except KeyError:
            raise UnknownReference(f"unknown template {template_id!r}; GET /v1/catalog lists them") from None

    def products(self) -> list[Product]:
        found = []
        for key in self.reader.list_files("products/"):
            if key.endswith(".json"):
                try:
                    found.append(Product.model_validate_json(self.reader.get(key)))
                except (ObjectMissing, ValueError):
                    log.warning("skipping unreadable product record %s", key)
        return sorted(found, key=lambda p: p.name)

    def product(self, name: str) -> Product:
        try:
            return Product.model_validate_json(self.reader.get(product_key(name)))
        except ObjectMissing:
            raise UnknownReference(f"unknown product {name!r}; add it with POST /v1/products") from None
        except ValueError:
            log.error("product record %s is unreadable", product_key(name))
            raise UnknownReference(f"product {name!r} has an unreadable record; add it again with "
                                   "POST /v1/products") from None

    def _case_twin(self, name: str) -> str | None:
        """Another product listed whose name differs from `name` only in case: on a case-insensitive store (a
        file:// folder on macOS or Windows) the two would share a record and files."""
        for key in self.reader.list_files("products/"):
            other = key.removeprefix("products/").removesuffix(".json")
            if key.endswith(".json") and other != name and other.lower() == name.lower():
                return other
        return None

    def lora_exists(self, name: str) -> bool:
        return self.reader.exists(lora_key(name))

    def add_product(self, product: Product, lora: bytes | None = None, packshot: bytes | None = None,
                    photos: list[bytes] | None = None) -> Product:
        """Add or replace a product. What is not given is kept from the record it replaces: a photo added
        to a product keeps its LoRA, and a LoRA added keeps its packshot. `photos` (normalised PNGs) are kept
        to teach it from later, in place of any it kept before."""
        try:
            earlier = self.product(product.name)
        except UnknownReference:
            earlier = None
        # a case-insensitive store reads the twin's record under this name; any other lists it
        if twin := earlier.name if earlier and earlier.name != product.name else self._case_twin(product.name):
            raise Conflict(f"a product named {twin!r} exists already: use that name to replace it, or choose a name "
                           "that differs by more than upper and lower case (on some storage the two would share "
                           "their files)")
        # The files go first: a product record is only listed once what it points to is complete.
        if lora is not None:
            self.storage.put(lora_key(product.name), lora, "application/octet-stream")
        if packshot is not None:
            self.storage.put(packshot_key(product.name), packshot, "image/png")
        if photos:
            self._keep_photos(product.name, photos)
        product = product.model_copy(update={
            "has_lora": lora is not None or bool(earlier and earlier.has_lora and self.lora_exists(product.name)),
            "packshot_key": packshot_key(product.name) if packshot is not None else (earlier and earlier.packshot_key),
            "training": earlier.training if earlier else None,
        })
        self._write(product)
        log.info("product %s added (LoRA: %s, packshot: %s, photos kept: %s)", product.name, product.has_lora,
                 bool(product.packshot_key), len(photos) if photos else "as before")
        return product

    def _keep_photos(self, name: str, photos: list[bytes]) -> None:
        """Its photos as 0.png, 1.png, ...; those an earlier version of it kept past them are removed."""
        for n, png in enumerate(photos):
            self.storage.put(product_photo_key(name, n), png, "image/png")
        kept = {product_photo_key(name, n) for n in range(len(photos))}
        for key in self.storage.list_files(product_photos_prefix(name)):
            if key not in kept:
                self.storage.delete(key)

    def update(self, name: str, *, if_training: str | None = None, **fields) -> Product:
        """Change fields of a product that exists, written over the version read: a delete meanwhile is not
        undone (UnknownReference), and another change meanwhile is read again, not overwritten. With
        `if_training`, only the product whose latest training that is: one deleted and added again under its
        name is another product (UnknownReference too)."""
        while True:
            try:
                data, version = self.storage.get_versioned(product_key(name))
            except ObjectMissing:
                return self.product(name)  # raises UnknownReference, with its words
            product = Product.model_validate_json(data)
            if if_training is not None and product.training != if_training:
                raise UnknownReference(f"product {name!r} was deleted and added again since training {if_training} "
                                       "started")
            product = product.model_copy(update=fields)
            try:
                self.storage.put_if(product_key(name), product.model_dump_json().encode(), version, "application/json")
                return product
            except WriteConflict:
                continue

    def _write(self, product: Product) -> None:
        self.storage.put(product_key(product.name), product.model_dump_json().encode(), "application/json")

    def delete(self, name: str) -> None:
        """Remove the record first (the product leaves the catalog at once), then its files. A delete that
        storage cut short (the record gone, a file left) is finished by the next, as is an unreadable record."""
        keys = (product_key(name), lora_key(name), packshot_key(name))
        try:
            self.product(name)
        except UnknownReference:
            if not any(self.storage.exists(key) for key in keys) \
                    and not self.storage.list_files(product_photos_prefix(name)):
                raise
        for key in keys:
            self.storage.delete(key)
        # the photos it was added with; then the folder, whose marker an S3 store (SeaweedFS) keeps while it holds one
        self.storage.delete_prefix(product_photos_prefix(name))
        self.storage.delete_prefix(product_folder(name))
        log.info("product %s deleted", name)
