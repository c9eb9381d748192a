"""What a training step sees of a photo: the views backend.lora.trainer.augment cuts, and the CLI switches."""

import json
import random

import numpy as np
from PIL import Image

from backend.lora.train import TrainSettings, find_products, load_photos, parse_args, with_boxes
from backend.lora.views import augment, crop_square

CLI = ["--images", "photos", "--trigger", "sks bottle", "--output", "out/bottle.safetensors"]


def test_the_cli_mirrors_photos_only_when_asked():
    """Most products carry a label, and a mirrored label teaches the wrong one: `python -m backend.lora.train`
    trains unmirrored as the app does, unless --flip asks; --no-flip, which older command lines (and the app)
    pass, is still taken and changes nothing."""
    assert parse_args(CLI, TrainSettings()).flip is False
    assert parse_args([*CLI, "--no-flip"], TrainSettings()).flip is False
    assert parse_args([*CLI, "--flip"], TrainSettings()).flip is True
    label = Image.new("RGB", (40, 40), (255, 255, 255))
    label.paste((200, 0, 0), (0, 0, 20, 40))  # red on the left: a mirrored view has it on the right
    args = parse_args(CLI, TrainSettings())
    lefts = {augment(label, 16, random.Random(seed), False, args.flip, 0).image.getpixel((2, 8)) for seed in range(20)}
    assert lefts == {(200, 0, 0)}
    args = parse_args([*CLI, "--flip"], TrainSettings())
    lefts = {augment(label, 16, random.Random(seed), False, args.flip, 0).image.getpixel((2, 8)) for seed in range(20)}
    assert lefts == {(200, 0, 0), (255, 255, 255)}


def test_every_view_of_a_wide_photo_holds_its_centre():
    """A product photo has the product in the middle and every view's caption names it. On a 10:1 photo a crop
    anywhere showed any of the middle in about one view in ten; each crop now holds the centre, mirrored or
    not, and its corner (SDXL's crop conditioning) is still where it lies in the photo scaled as it was."""
    photo = Image.new("RGB", (400, 40), (0, 0, 0))
    photo.paste((255, 0, 0), (198, 0, 202, 40))  # 4 px about the centre, x = 200
    for seed in range(60):
        view = augment(photo, 32, random.Random(seed), True, True, 0)
        assert np.asarray(view.image)[..., 0].max() > 100, f"seed {seed}: the centre is not in the view"
        plain = augment(photo, 32, random.Random(seed), True, False, 0)
        side = int(40 * random.Random(seed).uniform(0.6, 1.0))  # the crop's side, drawn first
        top, left = (round(c * side / 32) for c in plain.crop_top_left)  # in the photo's pixels, +-1
        assert left - 1 <= 200 <= left + side + 1 and 0 <= top <= 40 - side, (seed, side, plain.crop_top_left)


def test_a_square_photos_views_are_drawn_as_before():
    """On a square photo a crop of 60-100 % of it always holds the centre: the corners are those drawn before
    the centre was kept (these values), spread over the photo, not all in the middle."""
    photo = Image.new("RGB", (200, 200))
    corners = [augment(photo, 64, random.Random(seed), True, False, 0).crop_top_left for seed in range(10)]
    assert corners == [(2, 4), (16, 4), (0, 0), (4, 16), (21, 3), (0, 8), (5, 1), (11, 4), (11, 28), (7, 9)]


def painted(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    """A white photo with a dark product filling `box`."""
    photo = Image.new("RGB", size, (255, 255, 255))
    photo.paste((30, 60, 140), box)
    return photo


def whole_in_view(box, left: int, top: int, side: int) -> bool:
    return left <= box[0] and top <= box[1] and box[2] <= left + side and box[3] <= top + side


def test_every_view_holds_the_whole_product_where_its_box_is_known():
    """A product off to one side of a wide photo: views that hold the photo's centre cut it or miss it; with its
    box, every random view holds all of it (and is never smaller than it), and the views still vary."""
    w, h, box = 400, 100, (20, 30, 80, 90)
    draws = 300
    centred = sum(whole_in_view(box, *crop_square(w, h, random.Random(s), True, None)) for s in range(draws))
    views = [crop_square(w, h, random.Random(s), True, box) for s in range(draws)]
    print(f"\nwhole product in view: {centred / draws:.0%} holding the centre, "
          f"{sum(whole_in_view(box, *v) for v in views) / draws:.0%} holding its box")
    assert all(whole_in_view(box, *v) for v in views)
    assert centred < draws // 10, "the photo's centre is far from this product"
    assert len({v for v in views}) > 50 and min(side for *_, side in views) == 60, "views of many sizes and places"
    pixels = np.asarray(augment(painted((w, h), box), 32, random.Random(3), True, False, 0, box).image)
    assert (pixels[..., 2] > 100).sum() > 0 and (pixels[..., 0] < 100).sum() > 0, "the product is in the picture"


def test_a_product_longer_than_any_view_has_its_middle_held():
    """A wide product on a wide photo cannot fit a square view: each holds its middle, the whole height of it."""
    w, h, box = 400, 100, (50, 10, 350, 90)
    for seed in range(100):
        left, top, side = crop_square(w, h, random.Random(seed), True, box)
        assert left <= 200 <= left + side and top <= 10 and 90 <= top + side, (seed, left, top, side)


def test_the_fixed_view_is_centred_on_the_product():
    """The probe loss's view (no random crop) is the largest square about the product, not about the photo."""
    assert crop_square(400, 100, random.Random(0), False, (250, 20, 310, 80)) == (230, 0, 100)
    assert crop_square(400, 100, random.Random(0), False, (0, 20, 30, 80)) == (0, 0, 100), "kept inside the photo"
    assert crop_square(400, 100, random.Random(0), False, None) == (150, 0, 100)


def test_a_packshot_shows_its_own_box_and_a_plain_photo_none(tmp_path):
    cut = Image.new("RGBA", (120, 60), (0, 0, 0, 0))
    cut.paste((200, 30, 30, 255), (70, 10, 110, 50))
    cut.save(tmp_path / "cut.png")
    painted((120, 60), (70, 10, 110, 50)).save(tmp_path / "plain.png")
    photos = {p.name: p for p in load_photos(tmp_path, None, 0, "a photo of {trigger}", "sks mug")}
    assert photos["cut.png"].box == (70, 10, 110, 50)
    assert photos["plain.png"].box is None, "found only with a background remover"


def test_the_background_remover_finds_the_product_in_plain_photos(tmp_path, tiny_segmenter):
    """--find-product (in the app: BG_REMOVAL_MODEL) finds where the product lies in photos without transparency;
    a photo with nothing in it gets no box, and a packshot keeps its own."""
    painted((300, 120), (200, 20, 260, 100)).save(tmp_path / "a.png")
    Image.new("RGB", (300, 120), (255, 255, 255)).save(tmp_path / "empty.png")
    cut = Image.new("RGBA", (120, 60), (0, 0, 0, 0))
    cut.paste((200, 30, 30, 255), (70, 10, 110, 50))
    cut.save(tmp_path / "cut.png")
    photos = load_photos(tmp_path, None, 0, "a photo of {trigger}", "sks mug")
    found = find_products(photos, str(tiny_segmenter))
    assert set(found) == {"a.png", "empty.png"}, "a packshot's own box is not looked for"
    assert found["empty.png"] is None
    assert all(abs(a - b) <= 2 for a, b in zip(found["a.png"], (200, 20, 260, 100))), found
    boxes = {p.name: p.box for p in with_boxes(photos, found)}
    assert boxes["a.png"] == found["a.png"] and boxes["empty.png"] is None and boxes["cut.png"] == (70, 10, 110, 50)


def test_a_remover_not_on_this_machine_is_not_downloaded(tmp_path, monkeypatch):
    """A training never fetches a model: a named remover that was never downloaded finds nothing, at once."""
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "empty-home"))
    painted((64, 64), (10, 10, 40, 40)).save(tmp_path / "a.png")
    photos = load_photos(tmp_path, None, 0, "{trigger}", "sks")
    assert find_products(photos, "u2netp") == {}


def test_boxes_are_found_once_per_training_and_kept_for_its_resumes(tmp_path, tiny_segmenter):
    """The first attempt stores trainings/<id>/boxes.json; a resumed one (or a node's next chunk) reads it and
    opens no remover; an unreadable file is found again."""
    from backend.lora.worker_training import boxes_key, product_boxes
    from backend.storage import open_storage

    storage = open_storage(f"file://{tmp_path / 'store'}")
    (tmp_path / "photos").mkdir()
    painted((300, 120), (200, 20, 260, 100)).save(tmp_path / "photos" / "0.png")
    photos = load_photos(tmp_path / "photos", None, 0, "{trigger}", "sks")
    first = product_boxes(storage, "t1", str(tiny_segmenter), photos)
    assert json.loads(storage.get(boxes_key("t1"))) == {"0.png": list(first["0.png"])}
    assert product_boxes(storage, "t1", None, photos) == first, "read back, with no remover at hand"
    storage.put(boxes_key("t1"), b"{not json", "application/json")
    assert product_boxes(storage, "t1", str(tiny_segmenter), photos) == first
    assert product_boxes(storage, "t2", None, photos) == {}, "no remover, nothing stored: the photos' centres"
    assert not storage.exists(boxes_key("t2"))
