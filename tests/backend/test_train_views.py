"""What a training step sees of a photo: the views backend.lora.trainer.augment cuts, and the CLI switches."""

import random

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
