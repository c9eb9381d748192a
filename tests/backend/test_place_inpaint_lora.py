"""Place mode with a dedicated inpainting checkpoint (INPAINT_MODEL_ID): the product's LoRA reaches it too,
and the product's own pixels are still kept exactly. A tiny inpainting pipeline (9-channel UNet) is built here."""

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from backend.contract import lora_key
from backend.gpu.messages import LoraTask, Task
from backend.gpu.pipeline import Generator
from backend.lora.check import normalize_lora
from backend.storage import LocalStorage
from tests.backend import wild_loras

LAYOUT = "jobs/" + "p" * 32 + "/layout.png"


@pytest.fixture(scope="module")
def tiny_inpainting(tiny_model, tmp_path_factory) -> Path:
    """The tiny SD's parts with an inpainting UNet (latents + mask + masked image: 9 input channels)."""
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline, UNet2DConditionModel

    base = StableDiffusionPipeline.from_pretrained(tiny_model, safety_checker=None, requires_safety_checker=False)
    torch.manual_seed(5)
    unet = UNet2DConditionModel.from_config(dict(base.unet.config) | {"in_channels": 9})
    pipe = StableDiffusionInpaintPipeline(vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer,
                                          unet=unet, scheduler=base.scheduler, safety_checker=None,
                                          feature_extractor=None, requires_safety_checker=False)
    folder = tmp_path_factory.mktemp("tiny-inpainting")
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def layer() -> bytes:
    canvas = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    canvas.paste(Image.new("RGBA", (20, 28), (200, 40, 40, 255)), (22, 24))
    out = io.BytesIO()
    canvas.save(out, "PNG")
    return out.getvalue()


def place_task(*loras: LoraTask) -> Task:
    return Task(task_id=1, job_id="p" * 32, indices=(0,), seeds=(3,), keys=("jobs/" + "p" * 32 + "/0.png",),
                prompt="a bottle on a beach", negative_prompt="", steps=2, guidance_scale=7.5, width=64, height=64,
                strength=1.0, loras=loras, mode="place", layout_key=LAYOUT, shadow=False, harmonize=False)


def test_a_product_lora_reaches_a_dedicated_inpainting_checkpoint(tiny_model, tiny_inpainting, tmp_path):
    storage = LocalStorage(tmp_path / "storage")
    storage.put(LAYOUT, layer(), "image/png")
    storage.put(lora_key("bottle"), normalize_lora(wild_loras.diffusers_lora(tiny_model, seed=4), str(tiny_model)))
    gen = Generator(str(tiny_model), "cpu", storage, tmp_path / "cache", inpaint_model_id=str(tiny_inpainting))

    def draw(*loras) -> np.ndarray:
        (image,) = gen.generate(place_task(*loras), lambda: False, lambda step, total: None)
        assert isinstance(image, Image.Image), image
        return np.asarray(image.convert("RGB"), dtype=np.int16)

    plain = draw()
    with_lora = draw(LoraTask("bottle", 1.0, lora_key("bottle")))
    again = draw()
    opaque = np.asarray(Image.open(io.BytesIO(layer())))[..., 3] == 255
    scene = ~opaque
    assert float(np.abs(with_lora - plain)[scene].mean()) > 2.0, "the LoRA changes the scene the checkpoint draws"
    assert (with_lora[opaque] == [200, 40, 40]).all() and (plain[opaque] == [200, 40, 40]).all(), "product kept"
    assert np.array_equal(plain, again), "a job without the LoRA after one with it draws as before"
    assert gen.inpainter().unet is not gen.t2i.unet, "the dedicated checkpoint was used, not MODEL_ID's UNet"
