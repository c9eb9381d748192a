"""What a training step sees of a photo: the views backend.lora.trainer.augment cuts, and the CLI switches."""

import random

import numpy as np
from PIL import Image

from backend.lora.train import TrainSettings, parse_args
from backend.lora.trainer import augment

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
