"""The trained LoRA says what it is: its safetensors metadata holds the trigger, the base model, the training's
settings in the keys A1111, ComfyUI and Civitai read (kohya's `ss_*`, the SAI model spec's `modelspec.*`), and
nothing from the machine it was trained on; diffusers and our own loader still load it, and so does the product's
LoRA the app stores from it."""

import json
import os
import socket
import struct
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from backend.lora.check import normalize_lora
from backend.lora.formats import normalize_upload
from backend.lora.loading import load_lora_into
from backend.lora.metadata import base_model_name
from backend.lora.safetensors_file import read_safetensors_header
from backend.lora.train import TrainSettings, parse_args, train

pytestmark = pytest.mark.usefixtures("torch_one_thread")

SECRET_CAPTION = "sks bottle on the desk at 12 Lime Street"


@pytest.fixture(scope="module")
def trained(tiny_model, tmp_path_factory):
    photos = tmp_path_factory.mktemp("photos-of-alice")
    for i, colour in enumerate([(200, 30, 30), (30, 160, 60), (40, 40, 200)]):
        img = Image.new("RGB", (48, 40), (235, 235, 230))
        ImageDraw.Draw(img).ellipse((6 + 4 * i, 4, 34 + 4 * i, 36), fill=colour)
        img.save(photos / f"bottle_{i}.png")
    (photos / "bottle_0.txt").write_text(SECRET_CAPTION)
    output = tmp_path_factory.mktemp("out") / "bottle.safetensors"
    settings = TrainSettings(api_key="sk-test-0123456789abcdef")
    result = train(parse_args(["--images", str(photos), "--trigger", "sks bottle", "--output", str(output),
                               "--model", str(tiny_model), "--name", "Amber bottle", "--resolution", "32",
                               "--rank", "4", "--lr", "1e-2", "--steps", "4", "--checkpoint-every", "2",
                               "--seed", "7", "--quiet"], settings))
    return result, photos


def metadata(path: Path) -> dict:
    """The header's metadata as written (read_safetensors_header would make every value a string)."""
    data = path.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + size])["__metadata__"]


def test_the_trained_lora_says_what_it_is(trained, tiny_model):
    result, _ = trained
    about = metadata(result.output)
    assert all(isinstance(v, str) for v in about.values()), "safetensors metadata values are strings"
    assert about["format"] == "pt"
    assert about["modelspec.sai_model_spec"] == "1.0.0"
    assert about["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert about["modelspec.implementation"] == "diffusers"
    assert about["modelspec.title"] == about["ss_output_name"] == "Amber bottle"
    assert about["modelspec.trigger_phrase"] == "sks bottle"
    assert about["modelspec.resolution"] == "32x32" and about["ss_resolution"] == "(32, 32)"
    assert about["modelspec.prediction_type"] == "epsilon"
    assert about["ss_sd_model_name"] == tiny_model.name  # a local folder: its name, not its path
    assert (about["ss_base_model_version"], about["ss_v2"]) == ("sd_v1", "False")
    assert (about["ss_network_dim"], about["ss_network_alpha"]) == ("4", "4")
    assert (about["ss_steps"], about["ss_max_train_steps"]) == ("4", "4")
    assert float(about["ss_learning_rate"]) == 1e-2
    assert about["ss_num_train_images"] == "3" and about["ss_seed"] == "7"
    assert about["ss_network_train_unet_only"] == "True" and about["ss_flip_aug"] == "False"
    made = datetime.fromisoformat(about["modelspec.date"])
    assert made.tzinfo is not None and abs(datetime.now(timezone.utc) - made) < timedelta(minutes=30)
    checkpoint = metadata(result.output.with_name("bottle-checkpoints") / "step-000002" / "lora.safetensors")
    assert checkpoint["ss_steps"] == "2" and checkpoint["modelspec.trigger_phrase"] == "sks bottle"


def test_the_metadata_names_nothing_from_the_training_machine(trained, tiny_model):
    """No path (the photos', the model's, the output's, the home folder), no caption a person wrote, no API key,
    no host name: only the trigger and the title are words a person chose."""
    result, photos = trained
    about = metadata(result.output)
    text = " ".join(f"{k} {v}" for k, v in about.items())
    for secret in (str(photos), photos.name, str(tiny_model), str(tiny_model.parent), str(result.output.parent),
                   os.getcwd(), str(Path.home()), "Lime Street", "sk-test-0123456789abcdef", socket.gethostname()):
        assert secret not in text, secret
    assert "/" not in about["ss_sd_model_name"]


def test_diffusers_and_our_loader_load_the_lora_with_its_metadata(trained, tiny_model, tmp_path):
    """diffusers' load_lora_weights reads the file as written; our loader reads it as uploaded, and as the app
    stores a trained product's LoRA (checked, keeping the trained file's metadata, titled as the product)."""
    from diffusers import StableDiffusionPipeline

    result, _ = trained
    data = result.output.read_bytes()
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)

    def draw():
        return pipe("a photo of sks bottle", num_inference_steps=2, height=64, width=64, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images[0]

    plain = draw()
    pipe.load_lora_weights(str(result.output.parent), weight_name=result.output.name, adapter_name="diffusers")
    with_lora = draw()
    assert np.abs(with_lora - plain).max() > 1e-3
    pipe.delete_adapters("diffusers")

    (tmp_path / "upload.safetensors").write_bytes(normalize_upload(data))
    assert load_lora_into(pipe, tmp_path / "upload.safetensors", "upload") == []
    np.testing.assert_allclose(draw(), with_lora, atol=1e-5)
    pipe.delete_adapters("upload")

    stored = normalize_lora(data, str(tiny_model), title="amber-bottle")  # as TrainingService._adopt stores it
    _, about, _ = read_safetensors_header(stored)
    assert about["showroom_lora"] == "1" and about["source_format"] == "diffusers", "the loader's own keys stay"
    assert about["modelspec.title"] == about["ss_output_name"] == "amber-bottle"
    assert about["modelspec.trigger_phrase"] == "sks bottle" and about["ss_network_dim"] == "4"
    (tmp_path / "product.safetensors").write_bytes(stored)
    assert load_lora_into(pipe, tmp_path / "product.safetensors", "product") == []
    np.testing.assert_allclose(draw(), with_lora, atol=1e-5)


def test_the_base_model_is_named_without_the_machines_paths(tmp_path):
    assert base_model_name("stabilityai/stable-diffusion-xl-base-1.0") == "stabilityai/stable-diffusion-xl-base-1.0"
    snapshot = tmp_path / "hub" / "models--stable-diffusion-v1-5--stable-diffusion-v1-5" / "snapshots" / "451f4fe"
    snapshot.mkdir(parents=True)
    assert base_model_name(str(snapshot)) == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    (tmp_path / "models" / "my-sdxl").mkdir(parents=True)
    assert base_model_name(str(tmp_path / "models" / "my-sdxl")) == "my-sdxl"
