"""backend.lora.train on a tiny SDXL pipeline, on CPU: conditioned as the SDXL pipeline conditions, it learns the
photos, its LoRA (UNet only, or with either or both text encoders) passes the upload checks, loads in a worker's
way and changes pictures, resumes, and is refused on SD 1.x (as an SD 1.x LoRA is on SDXL)."""

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file

from backend.lora.check import WrongBaseModel, normalize_lora
from backend.lora.loading import load_lora_into
from backend.lora.safetensors_file import LoraFormatError, read_safetensors_header
from backend.lora.train import TrainSettings, parse_args, train
from backend.lora.trainer import Trainer, vae_dtype
from backend.lora.views import View, augment

pytestmark = pytest.mark.usefixtures("torch_one_thread")

SMALL = ["--resolution", "32", "--rank", "4", "--lr", "1e-2", "--quiet", "--checkpoint-every", "0"]
PROMPT = "a photo of sks bottle"


@pytest.fixture(scope="module")
def tiny_xl(tmp_path_factory) -> Path:
    from backend.tools.gpu_check import TINY_XL, TINY_XL_TEXT_2, save_sdxl

    return save_sdxl(TINY_XL, TINY_XL_TEXT_2, tmp_path_factory.mktemp("tiny-sdxl"), "cpu")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for i, colour in enumerate([(200, 30, 30), (30, 160, 60), (40, 40, 200)]):
        img = Image.new("RGB", (48, 40), (235, 235, 230))
        ImageDraw.Draw(img).ellipse((6 + 4 * i, 4, 34 + 4 * i, 36), fill=colour)
        img.save(folder / f"bottle_{i}.png")
    return folder


def args(model: Path, photos: Path, output: Path, *extra: str):
    return parse_args(["--images", str(photos), "--trigger", "sks bottle", "--output", str(output),
                       "--model", str(model), *SMALL, *extra], TrainSettings())


@pytest.fixture(scope="module")
def unet_only(tiny_xl, photos, tmp_path_factory):
    return train(args(tiny_xl, photos, tmp_path_factory.mktemp("xl") / "bottle.safetensors", "--steps", "30"))


@pytest.fixture(scope="module")
def xl_pipe(tiny_xl):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_xl)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def draw(pipe):
    return pipe(PROMPT, num_inference_steps=2, height=64, width=64, output_type="np",
                generator=torch.Generator().manual_seed(0)).images[0]


def components(path: Path) -> set[str]:
    return {key.split(".")[0] for key in load_file(str(path))}


def test_sdxl_conditioning_is_the_pipelines(tiny_xl, photos, xl_pipe, tmp_path):
    """Text: both encoders' penultimate states and the second's pooled embedding, exactly as the SDXL pipeline
    encodes a prompt. Time ids: a full square photo is what generation asks for; a random crop reaches the
    UNet with the photo's size and its own corner."""
    trainer = Trainer(args(tiny_xl, photos, tmp_path / "l.safetensors"))
    full = View(Image.new("RGB", (32, 32)), (32, 32), (0, 0))
    with torch.no_grad():
        hidden, added = trainer.condition([PROMPT], [full])
        embeds, _, pooled, _ = xl_pipe.encode_prompt(PROMPT, device="cpu", do_classifier_free_guidance=False)
    assert hidden.shape[-1] == xl_pipe.unet.config.cross_attention_dim == 32
    torch.testing.assert_close(hidden, embeds)
    torch.testing.assert_close(added["text_embeds"], pooled)
    expected = xl_pipe._get_add_time_ids((32, 32), (0, 0), (32, 32), dtype=pooled.dtype,
                                         text_encoder_projection_dim=xl_pipe.text_encoder_2.config.projection_dim)
    torch.testing.assert_close(added["time_ids"], expected)

    seen = []
    trainer.unet.register_forward_pre_hook(lambda _, a, kw: seen.append(kw["added_cond_kwargs"]), with_kwargs=True)
    photo = Image.open(photos / "bottle_0.png").convert("RGB")  # 48 x 40
    view = augment(photo, 32, random.Random(7), crop=True, flip=False, jitter=0)
    with torch.no_grad():
        trainer.loss([view], [PROMPT], seed=0)
    assert view.crop_top_left != (0, 0)
    assert seen[0]["time_ids"].tolist() == [[40, 48, *view.crop_top_left, 32, 32]]


def test_a_views_corner_is_where_the_crop_lies_in_the_scaled_photo():
    """Scale the whole photo as the crop was scaled (mirrored if the view is), cut size x size at the view's
    corner: that is the view. A wrong corner (or a mirrored view's unmirrored corner) cuts another place."""
    yy, xx = np.mgrid[0:90, 0:140]
    photo = Image.fromarray(np.stack([xx * 255 // 139, yy * 255 // 89, (xx * yy) % 256], -1).astype(np.uint8))
    flips = set()
    for seed in range(12):
        view = augment(photo, 32, random.Random(seed), crop=True, flip=True, jitter=0)
        assert view.original_size == (90, 140)
        got = np.asarray(view.image, dtype=np.float32)
        errors = {}
        for mirrored in (False, True):
            # the crop's side from its corner: scale = 32 / side, so the scaled photo's height is 90 * 32 / side
            rng = random.Random(seed)
            side = int(90 * rng.uniform(0.6, 1.0))
            scaled = photo.resize((round(140 * 32 / side), round(90 * 32 / side)), Image.BICUBIC)
            scaled = scaled.transpose(Image.FLIP_LEFT_RIGHT) if mirrored else scaled
            top, left = view.crop_top_left
            cut = np.asarray(scaled.crop((left, top, left + 32, top + 32)), dtype=np.float32)
            errors[mirrored] = float(np.abs(cut[..., :2] - got[..., :2]).mean())
        mirrored = min(errors, key=errors.get)
        flips.add(mirrored)
        assert errors[mirrored] < 4, (seed, errors, view.crop_top_left)
    assert flips == {False, True}


def test_sdxl_training_lowers_the_loss_and_writes_a_unet_lora(unet_only):
    assert unet_only.end_step == 30 and np.isfinite(unet_only.losses).all()
    assert unet_only.probe_loss_after < 0.98 * unet_only.probe_loss_before, unet_only
    assert components(unet_only.output) == {"unet"}


def check_lora_on_the_pipeline(output: Path, model: Path, pipe, tmp_path: Path, adapter: str) -> None:
    """Upload checks against the tiny SDXL's config, then the worker's loader: the picture changes, and
    without the adapter it is the plain picture again."""
    stored = tmp_path / f"{adapter}.safetensors"
    stored.write_bytes(normalize_lora(output.read_bytes(), str(model)))
    plain = draw(pipe)
    assert load_lora_into(pipe, stored, adapter) == []
    with_lora = draw(pipe)
    pipe.delete_adapters(adapter)
    assert np.isfinite(with_lora).all() and np.abs(with_lora - plain).max() > 1e-3
    np.testing.assert_allclose(draw(pipe), plain, atol=1e-5)


def test_sdxl_unet_lora_passes_the_checks_loads_and_changes_pictures(unet_only, tiny_xl, xl_pipe, tmp_path):
    check_lora_on_the_pipeline(unet_only.output, tiny_xl, xl_pipe, tmp_path, "unet_only")


def test_an_sdxl_lora_says_it_is_one_and_diffusers_loads_it(unet_only, tiny_xl, xl_pipe):
    """Its metadata names SDXL in both conventions (A1111 tells SDXL LoRAs by ss_base_model_version) and the size
    it trained at (1024 by default, 32 here); diffusers' own load_lora_weights takes the file as written."""
    _, about, _ = read_safetensors_header(unet_only.output.read_bytes())
    assert about["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert (about["ss_base_model_version"], about["ss_v2"]) == ("sdxl_base_v1-0", "False")
    assert about["modelspec.resolution"] == "32x32" and about["ss_steps"] == "30"
    assert about["modelspec.trigger_phrase"] == "sks bottle" and about["ss_sd_model_name"] == tiny_xl.name
    plain = draw(xl_pipe)
    xl_pipe.load_lora_weights(str(unet_only.output.parent), weight_name=unet_only.output.name, adapter_name="d")
    with_lora = draw(xl_pipe)
    xl_pipe.delete_adapters("d")
    assert np.isfinite(with_lora).all() and np.abs(with_lora - plain).max() > 1e-3


@pytest.mark.parametrize("which, trained", [
    ("all", {"text_encoder", "text_encoder_2"}), ("1", {"text_encoder"}), ("2", {"text_encoder_2"})])
def test_sdxl_text_encoder_loras_train_and_load(which, trained, tiny_xl, photos, xl_pipe, tmp_path):
    """--train-text-encoder alone trains both of SDXL's encoders; 1 or 2 only that one. Their LoRAs learnt
    (lora_B starts at zero) and the file loads and changes pictures."""
    flag = ["--train-text-encoder"] + ([] if which == "all" else [which])
    result = train(args(tiny_xl, photos, tmp_path / "te.safetensors", "--steps", "6", *flag,
                        "--gradient-checkpointing", "on" if which == "all" else "off"))
    assert np.isfinite(result.losses).all()
    tensors = load_file(str(result.output))
    assert components(result.output) == {"unet"} | trained
    for name in trained:
        ups = [v for k, v in tensors.items() if k.startswith(f"{name}.") and ".lora_B." in k]
        assert ups and max(float(v.abs().max()) for v in ups) > 0, name
    check_lora_on_the_pipeline(result.output, tiny_xl, xl_pipe, tmp_path, f"te_{which}")


def test_sdxl_resume_continues_from_the_checkpoint(tiny_xl, photos, tmp_path):
    """With both text encoders: 2 steps, then --resume to 4, equals 4 in one go; other text-encoder options
    cannot resume it."""
    te = ["--train-text-encoder"]
    straight = train(args(tiny_xl, photos, tmp_path / "a" / "l.safetensors", "--steps", "4", *te))
    every = ["--checkpoint-every", "2"]
    train(args(tiny_xl, photos, tmp_path / "b" / "l.safetensors", "--steps", "2", *te, *every))
    state = json.loads((tmp_path / "b" / "l-checkpoints" / "step-000002" / "state.json").read_text())
    assert state["model"] == "sdxl" and state["text_encoders"] == ["text_encoder", "text_encoder_2"]
    with pytest.raises(SystemExit, match="pass the same --rank and --train-text-encoder"):
        train(args(tiny_xl, photos, tmp_path / "b" / "l.safetensors", "--steps", "4", "--resume",
                   "--train-text-encoder", "2", *every))
    resumed = train(args(tiny_xl, photos, tmp_path / "b" / "l.safetensors", "--steps", "4", "--resume", *te, *every))
    assert (resumed.start_step, len(resumed.losses)) == (2, 2)
    assert resumed.losses == pytest.approx(straight.losses[2:], rel=1e-4)
    a, b = load_file(str(straight.output)), load_file(str(resumed.output))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], msg=key)


def test_sdxl_and_sd_loras_are_refused_on_each_others_model(unet_only, tiny_xl, tiny_model, photos, tmp_path):
    """The base check at upload (config files only) and the worker's loader both refuse the other family."""
    from diffusers import StableDiffusionPipeline

    sd = train(args(tiny_model, photos, tmp_path / "sd.safetensors", "--steps", "2"))
    xl_data, sd_data = unet_only.output.read_bytes(), sd.output.read_bytes()
    with pytest.raises(WrongBaseModel, match="32-wide cross-attention.*16-wide"):
        normalize_lora(xl_data, str(tiny_model))
    with pytest.raises(WrongBaseModel, match="16-wide cross-attention.*32-wide"):
        normalize_lora(sd_data, str(tiny_xl))
    te = train(args(tiny_xl, photos, tmp_path / "te.safetensors", "--steps", "1", "--train-text-encoder", "2"))
    with pytest.raises(WrongBaseModel, match="text_encoder_2"):
        normalize_lora(te.output.read_bytes(), str(tiny_model))

    pipe = StableDiffusionPipeline.from_pretrained(tiny_model, safety_checker=None, requires_safety_checker=False)
    stored = tmp_path / "xl.safetensors"
    stored.write_bytes(normalize_lora(xl_data, None))  # as if stored before the upload check
    assert "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight" in \
        read_safetensors_header(stored.read_bytes())[0]
    with pytest.raises(LoraFormatError, match="does not match the base model"):
        load_lora_into(pipe, stored, "xl")
    assert not pipe.get_list_adapters().get("unet")


def test_resolution_and_vae_dtype_follow_the_model(tiny_xl, tiny_model, photos, tmp_path):
    """Without --resolution: 1024 on SDXL, 512 on SD 1.x. SDXL's VAE (force_upcast) encodes in fp32 under
    mixed precision; an SD VAE, or an SDXL VAE made for fp16, runs at the weights' dtype."""
    assert parse_args(["--images", str(photos), "--trigger", "t", "--output", "o.safetensors"]).resolution is None
    default = [a for a in SMALL if a not in ("--resolution", "32")]
    for model, size in ((tiny_xl, 1024), (tiny_model, 512)):
        trainer = Trainer(parse_args(["--images", str(photos), "--trigger", "t", "--output",
                                      str(tmp_path / "o.safetensors"), "--model", str(model), *default]))
        assert (trainer.resolution, trainer.xl) == (size, model == tiny_xl)
    assert trainer.vae.config.force_upcast  # AutoencoderKL's default, so SD's must not count
    upcast, fp16_fixed = {"force_upcast": True}, {"force_upcast": False}
    assert vae_dtype(True, type("C", (), upcast), torch.float16) == torch.float32
    assert vae_dtype(True, type("C", (), upcast), torch.float32) == torch.float32
    assert vae_dtype(False, type("C", (), upcast), torch.float16) == torch.float16
    assert vae_dtype(True, type("C", (), fp16_fixed), torch.bfloat16) == torch.bfloat16
