"""What a training step sees of a photo: the views backend.lora.trainer.augment cuts, and the CLI switches."""

import io
import json
import random

import numpy as np
import pytest
from PIL import Image

from backend.lora.train import TrainSettings, find_products, load_photos, parse_args, with_masks
from backend.lora.views import augment, crop_square, mask_box

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


def test_a_packshot_shows_its_own_box_and_mask_and_a_plain_photo_none(tmp_path):
    cut = Image.new("RGBA", (120, 60), (0, 0, 0, 0))
    cut.paste((200, 30, 30, 255), (70, 10, 110, 50))
    cut.save(tmp_path / "cut.png")
    painted((120, 60), (70, 10, 110, 50)).save(tmp_path / "plain.png")
    photos = {p.name: p for p in load_photos(tmp_path, None, 0, "a photo of {trigger}", "sks mug")}
    assert photos["cut.png"].box == (70, 10, 110, 50)
    assert np.array_equal(np.asarray(photos["cut.png"].mask), np.asarray(cut.getchannel("A")))
    assert photos["plain.png"].box is None and photos["plain.png"].mask is None, "found only with a remover"


def test_the_background_remover_finds_the_product_in_plain_photos(tmp_path, tiny_segmenter):
    """--find-product (in the app: BG_REMOVAL_MODEL) finds where the product lies in photos without transparency;
    a photo with nothing in it gets no mask, and a packshot keeps its own."""
    painted((300, 120), (200, 20, 260, 100)).save(tmp_path / "a.png")
    Image.new("RGB", (300, 120), (255, 255, 255)).save(tmp_path / "empty.png")
    cut = Image.new("RGBA", (120, 60), (0, 0, 0, 0))
    cut.paste((200, 30, 30, 255), (70, 10, 110, 50))
    cut.save(tmp_path / "cut.png")
    photos = load_photos(tmp_path, None, 0, "a photo of {trigger}", "sks mug")
    found = find_products(photos, str(tiny_segmenter))
    assert set(found) == {"a.png", "empty.png"}, "a packshot's own mask is not looked for"
    assert found["empty.png"] is None and found["a.png"].size == (300, 120)
    found_photos = {p.name: p for p in with_masks(photos, found)}
    assert all(abs(a - b) <= 2 for a, b in zip(found_photos["a.png"].box, (200, 20, 260, 100))), found_photos
    assert found_photos["empty.png"].box is None and found_photos["cut.png"].box == (70, 10, 110, 50)


def test_a_remover_not_on_this_machine_is_not_downloaded(tmp_path, monkeypatch):
    """A training never fetches a model: a named remover that was never downloaded finds nothing, at once."""
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "empty-home"))
    painted((64, 64), (10, 10, 40, 40)).save(tmp_path / "a.png")
    photos = load_photos(tmp_path, None, 0, "{trigger}", "sks")
    assert find_products(photos, "u2netp") == {}


def test_masks_are_found_once_per_training_and_kept_for_its_resumes(tmp_path, tiny_segmenter):
    """The first attempt stores trainings/<id>/masks/<photo> and boxes.json (last); a resumed one (or a node's next
    chunk) reads them and opens no remover; an unreadable file is found again."""
    from backend.lora.worker_training import boxes_key, mask_key, product_masks
    from backend.storage import open_storage

    storage = open_storage(f"file://{tmp_path / 'store'}")
    (tmp_path / "photos").mkdir()
    painted((300, 120), (200, 20, 260, 100)).save(tmp_path / "photos" / "0.png")
    Image.new("RGB", (300, 120), (255, 255, 255)).save(tmp_path / "photos" / "1.png")
    photos = load_photos(tmp_path / "photos", None, 0, "{trigger}", "sks")
    first = product_masks(storage, "t1", str(tiny_segmenter), photos)
    assert first["1.png"] is None and not storage.exists(mask_key("t1", "1.png"))
    boxes = json.loads(storage.get(boxes_key("t1")))
    assert boxes["1.png"] is None and all(abs(a - b) <= 2 for a, b in zip(boxes["0.png"], (200, 20, 260, 100)))
    again = product_masks(storage, "t1", None, photos)
    assert set(again) == {"0.png", "1.png"} and again["1.png"] is None, "read back, with no remover at hand"
    assert np.array_equal(np.asarray(again["0.png"]), np.asarray(first["0.png"]))
    storage.put(boxes_key("t1"), b"{not json", "application/json")
    assert np.array_equal(np.asarray(product_masks(storage, "t1", str(tiny_segmenter), photos)["0.png"]),
                          np.asarray(first["0.png"]))
    assert product_masks(storage, "t2", None, photos) == {}, "no remover: none, the photos' centres"
    assert json.loads(storage.get(boxes_key("t2"))) == {}, "decided: a later attempt must not weigh otherwise"
    assert product_masks(storage, "t2", str(tiny_segmenter), photos) == {}, "a node with a remover keeps to it"
    assert product_masks(storage, "t3", str(tiny_segmenter), photos, resuming=True) == {}, \
        "a checkpoint from before masks were found goes on without them"


def test_a_training_stopped_or_timed_out_while_finding_the_product_stops(tmp_path, tiny_segmenter):
    """Finding the product runs before step 1: deleting the product stops it between photos (the stop is not taken
    for a remover that failed), and past its budget the photos left get no mask."""
    from backend.lora.worker_training import TrainingStopped, boxes_key, product_masks
    from backend.storage import open_storage

    storage = open_storage(f"file://{tmp_path / 'store'}")
    for n in range(3):
        painted((120, 80), (20 + 10 * n, 10, 60 + 10 * n, 70)).save(tmp_path / f"{n}.png")
    photos = load_photos(tmp_path, None, 0, "{trigger}", "sks")
    seen = []

    def stop_at_second() -> None:
        seen.append(1)
        if len(seen) == 2:
            raise TrainingStopped("stopped at step 0")

    with pytest.raises(TrainingStopped):
        product_masks(storage, "t1", str(tiny_segmenter), photos, between=stop_at_second)
    assert not storage.exists(boxes_key("t1")), "nothing decided: the next attempt finds them"
    found = find_products(photos, str(tiny_segmenter), budget_s=0)
    assert sorted(found) == ["0.png", "1.png", "2.png"] and sum(m is not None for m in found.values()) <= 1, \
        "past the budget (here none) the photos left get no mask"


def test_a_stored_mask_that_does_not_fit_its_photo_is_left_out(tmp_path, tiny_segmenter):
    from backend.lora.worker_training import mask_key, product_masks
    from backend.storage import open_storage

    storage = open_storage(f"file://{tmp_path / 'store'}")
    (tmp_path / "p").mkdir()
    painted((300, 120), (200, 20, 260, 100)).save(tmp_path / "p" / "0.png")
    photos = load_photos(tmp_path / "p", None, 0, "{trigger}", "sks")
    product_masks(storage, "t1", str(tiny_segmenter), photos)
    wrong = io.BytesIO()
    Image.new("L", (120, 300), 255).save(wrong, format="PNG")
    storage.put(mask_key("t1", "0.png"), wrong.getvalue(), "image/png")
    assert product_masks(storage, "t1", None, photos) == {"0.png": None}, "not a ValueError on every retry"


def test_a_speck_the_remover_left_does_not_stretch_the_products_box():
    """One 4 x 4 island in a corner made the box the whole photo wide, and views no longer held the product."""
    mask = Image.new("L", (400, 300), 0)
    mask.paste(255, (40, 80, 160, 260))
    mask.paste(255, (392, 10, 396, 14))
    assert mask_box(mask) == (40, 80, 160, 260)
    assert mask_box(Image.new("L", (40, 40), 5)) is None, "haze alone is no product"


def test_the_remover_is_used_once_it_is_on_this_machine(tmp_path, monkeypatch):
    """on_disk reads rembg's own model folders: a named model downloaded before counts, so a training uses it."""
    from backend.place.cutout import BackgroundRemover

    monkeypatch.setenv("U2NET_HOME", str(tmp_path))
    assert not BackgroundRemover("u2netp").on_disk()
    (tmp_path / "u2netp.onnx").write_bytes(b"onnx")
    assert BackgroundRemover("u2netp").on_disk()


def test_a_views_mask_is_cut_scaled_and_mirrored_with_its_picture():
    """The loss weighs the pixels the mask says are the product: the mask must lie where the product lies in the
    view, whatever crop and mirroring the view drew."""
    photo = painted((300, 120), (200, 20, 260, 100))
    mask = Image.new("L", photo.size, 0)
    mask.paste(255, (200, 20, 260, 100))
    for seed in range(30):
        view = augment(photo, 64, random.Random(seed), True, True, 0, (200, 20, 260, 100), mask)
        product = np.asarray(view.image)[..., 0] < 128  # the dark product, on white
        marked = np.asarray(view.mask) > 128
        assert view.mask.size == (64, 64) and (product != marked).mean() < 0.03, seed


def test_the_loss_weighs_the_product_and_keeps_its_scale():
    """Where a view knows its product, its pixels count 1 and the rest `background`, scaled so each view's weights
    average 1 (the learning rate means what it did); a view without a mask counts every pixel alike."""
    from backend.lora.trainer import product_weights
    from backend.lora.views import View

    half = Image.new("L", (64, 64), 0)
    half.paste(255, (0, 0, 32, 64))  # the product fills the left half
    picture = Image.new("RGB", (64, 64))
    views = [View(picture, (64, 64), (0, 0), half), View(picture, (64, 64), (0, 0), None)]
    weights = product_weights(views, (8, 8), 0.2)
    assert tuple(weights.shape) == (2, 1, 8, 8)
    first, second = weights[0, 0].numpy(), weights[1, 0].numpy()
    assert np.allclose(first[:, :4], 1 / 0.6) and np.allclose(first[:, 4:], 0.2 / 0.6), "1 : 0.2, averaging 1"
    assert np.allclose(second, 1.0)
    assert product_weights([views[1]], (8, 8), 0.2) is None, "no mask: the plain mean"
    empty = View(picture, (64, 64), (0, 0), Image.new("L", (64, 64), 0))  # a pair's empty middle
    assert product_weights([empty], (8, 8), 0.0) is None, "no product in view: every pixel alike, never 0 / 0"
    only = product_weights(views[:1], (8, 8), 0.0)[0, 0].numpy()
    assert np.allclose(only[:, :4], 2.0) and np.allclose(only[:, 4:], 0.0)
    assert np.allclose(product_weights(views[:1], (8, 8), 1.0).numpy(), 1.0), "1 = the product and its ground alike"


def test_background_weight_is_checked():
    assert parse_args(CLI, TrainSettings()).background_weight == 0.2
    with pytest.raises(SystemExit):
        parse_args([*CLI, "--background-weight", "1.5"], TrainSettings())
