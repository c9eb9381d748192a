"""The photos a product is added with (`photos` parts of POST /v1/products) are kept with it to teach it from later:
normalised as a training's, replaced with it, removed with it, and a bad one changes nothing."""

import io
import uuid

from PIL import Image

from backend.contract import product_folder, product_key, product_photo_key, product_photos_prefix
from tests.factories import packshot, png_bytes
from tests.frontend.photos import product_photos


def unique(word: str) -> str:
    return f"{word}-{uuid.uuid4().hex[:6]}"


def add(backend, name: str, photos: list[tuple[str, bytes, str]], photo: bool = True):
    files = [("photos", p) for p in photos]
    if photo:
        files.append(("photo", ("shot.png", packshot(), "image/png")))
    return backend.post("/v1/products", data={"name": name, "trigger": f"zxq {name}"}, files=files)


def kept(backend, name: str) -> list[str]:
    return backend.storage.list_files(product_photos_prefix(name))


def sideways_jpeg() -> bytes:
    """A 40 x 20 JPEG whose EXIF says it is to be turned a quarter (orientation 6): upright it is 20 x 40."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return png_bytes(40, 20, (10, 120, 200), fmt="JPEG", exif=exif.tobytes())


def test_the_photos_a_product_is_added_with_are_kept_normalised(backend):
    name = unique("kettle")
    photos = product_photos(2) + [("turned.jpg", sideways_jpeg(), "image/jpeg")]
    r = add(backend, name, photos)
    assert r.status_code == 201, r.text
    assert set(r.json()) == {"name", "trigger", "category", "weight", "has_lora", "packshot_key", "training"}, \
        "the Product record keeps the contract's fields"
    assert kept(backend, name) == [product_photo_key(name, n) for n in range(3)]
    for n in range(3):
        with Image.open(io.BytesIO(backend.storage.get(product_photo_key(name, n)))) as img:
            assert img.format == "PNG" and not img.getexif(), "a clean PNG, no EXIF"
            size = img.size
        if n == 2:
            assert size == (20, 40), "turned upright as its EXIF said"
    assert backend.storage.exists(f"products/{name}.png"), "the packshot, as before"


def test_a_product_replaced_with_other_photos_keeps_only_those(backend):
    name = unique("teapot")
    assert add(backend, name, product_photos(3)).status_code == 201
    first = backend.storage.get(product_photo_key(name, 0))
    r = add(backend, name, [("red.png", png_bytes(30, 30, (200, 0, 0)), "image/png"),
                            ("blue.png", png_bytes(30, 30, (0, 0, 200)), "image/png")])
    assert r.status_code == 201, r.text
    assert kept(backend, name) == [product_photo_key(name, 0), product_photo_key(name, 1)], "the third is gone"
    with Image.open(io.BytesIO(backend.storage.get(product_photo_key(name, 0)))) as img:
        assert img.convert("RGB").getpixel((5, 5)) == (200, 0, 0) and backend.storage.get(
            product_photo_key(name, 0)) != first
    # a replace that sends no photos keeps those it has, as it keeps a LoRA or a packshot
    assert add(backend, name, []).status_code == 201
    assert len(kept(backend, name)) == 2


def test_deleting_a_product_removes_its_kept_photos(backend):
    name = unique("vase")
    assert add(backend, name, product_photos(3)).status_code == 201
    assert backend.delete(f"/v1/products/{name}").status_code == 204
    assert kept(backend, name) == [] and backend.storage.list_files(product_folder(name)) == []
    assert name not in backend.storage.list_dirs("products/"), "no folder left behind"
    assert not backend.storage.exists(product_key(name))
    assert backend.delete(f"/v1/products/{name}").status_code == 404


def test_a_bad_photo_is_refused_and_nothing_is_stored(backend):
    name = unique("jar")
    photos = product_photos(2) + [("notes.png", b"not an image", "image/png")]
    r = add(backend, name, photos)
    assert r.status_code == 422 and r.json()["detail"].startswith("photo 3: the photo could not be read"), r.text
    assert kept(backend, name) == [] and not backend.storage.exists(product_key(name))
    assert not backend.storage.exists(f"products/{name}.png")

    assert add(backend, name, product_photos(2)).status_code == 201
    before = [backend.storage.get(key) for key in kept(backend, name)]
    r = add(backend, name, product_photos(3)[:1] + [("empty.jpg", b"", "image/jpeg")])
    assert r.status_code == 422 and "photo 2" in r.json()["detail"], r.text
    assert [backend.storage.get(key) for key in kept(backend, name)] == before, "the photos it kept are as they were"
    r = add(backend, name, product_photos(41))
    assert r.status_code == 422 and "at most 40 photos" in r.json()["detail"], r.text
    assert [backend.storage.get(key) for key in kept(backend, name)] == before


def test_photos_alone_make_no_product(backend):
    name = unique("pot")
    r = add(backend, name, product_photos(2), photo=False)
    assert r.status_code == 422 and "part 'photo'" in r.json()["detail"], r.text
    assert kept(backend, name) == []
