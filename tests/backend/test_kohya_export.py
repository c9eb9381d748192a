"""A product's LoRA taken elsewhere: backend.lora.kohya_export writes the stored file in kohya's layout for
AUTOMATIC1111, Forge and ComfyUI. It must read back as the stored file exactly (our reader), load into diffusers'
own kohya converter with the same effect as the stored file has in Showroom (an independent reader), and name
every module as kohya does."""

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from backend.lora.check import normalize_lora
from backend.lora.formats import normalize_upload
from backend.lora.kohya_export import NotExportable, to_kohya
from backend.lora.loading import load_lora_into
from backend.lora.safetensors_file import Tensor, read_safetensors, write_safetensors
from tests.backend import wild_loras
from tests.factories import make_lora

pytestmark = pytest.mark.usefixtures("torch_one_thread")

# (model, LoRA, its text-encoder prefixes): SD 1.x and SDXL, UNet alone and with the text encoder(s); alphas other
# than the rank (diffusers' rank/2, kohya's 1) so that the folded scale is checked; kohya's own files (fp16, 1x1
# convs, SDXL's sgm names).
CASES = {
    "sd-unet": ("tiny_model", lambda model: make_lora(model, seed=1), set()),
    "sd-unet-te": ("tiny_model", lambda model: wild_loras.diffusers_lora(model, seed=2), {"te"}),
    "sd-kohya": ("tiny_model", lambda model: wild_loras.kohya_lora(model, seed=3), {"te"}),
    "sdxl-unet": ("tiny_sdxl", lambda model: wild_loras.peft_lora(model, seed=4), set()),
    "sdxl-unet-te": ("tiny_sdxl", lambda model: wild_loras.diffusers_lora(model, seed=5), {"te1", "te2"}),
    "sdxl-kohya": ("tiny_sdxl", lambda model: wild_loras.kohya_lora(model, seed=6), {"te1", "te2"}),
}
KOHYA_KEY = re.compile(r"^(?P<module>lora_(?P<part>unet|te|te1|te2)_[A-Za-z0-9_]+)\.(lora_down\.weight|lora_up\.weight"
                       r"|alpha)$")


@pytest.fixture(scope="module")
def tiny_sdxl(tiny_model, tmp_path_factory) -> Path:
    return wild_loras.build_tiny_sdxl(tmp_path_factory.mktemp("tiny-sdxl"), tiny_model / "tokenizer")


@dataclass
class Case:
    model: Path
    sdxl: bool
    text_parts: set[str]
    stored: bytes   # the LoRA as an upload stores it
    kohya: bytes    # its export


@pytest.fixture(scope="module", params=list(CASES))
def case(request) -> Case:
    model_fixture, build, text_parts = CASES[request.param]
    model, sdxl = request.getfixturevalue(model_fixture), model_fixture == "tiny_sdxl"
    stored = normalize_upload(build(model))
    return Case(model, sdxl, text_parts, stored, to_kohya(stored, sdxl=sdxl))


def snapshot(data: bytes) -> dict[str, tuple]:
    return {k: (t.dtype, t.shape, t.raw) for k, t in read_safetensors(data)[0].items()}


# ----- (a) our reader takes it back as the stored file -----

def test_export_reads_back_as_the_stored_lora_bit_for_bit(case):
    back = normalize_upload(case.kohya)
    assert snapshot(back) == snapshot(case.stored)
    assert read_safetensors(back)[1]["source_format"] == "kohya"


# ----- (c) every key as kohya names it -----

def test_every_exported_key_is_kohya_named_with_an_alpha_equal_to_the_rank(case):
    tensors, metadata = read_safetensors(case.kohya)
    modules: dict[str, set[str]] = {}
    for key in tensors:
        m = KOHYA_KEY.match(key)
        assert m, f"{key!r} is not a kohya key"
        modules.setdefault(m["module"], set()).add(key.removeprefix(m["module"] + "."))
    assert all(parts == {"lora_down.weight", "lora_up.weight", "alpha"} for parts in modules.values())
    assert len(modules) * 2 == sum(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in snapshot(case.stored))
    for module in modules:
        alpha = tensors[f"{module}.alpha"]
        assert alpha.shape == () and alpha.array() == tensors[f"{module}.lora_down.weight"].shape[0]
    assert {KOHYA_KEY.match(k)["part"] for k in tensors} == {"unet"} | case.text_parts
    assert metadata["ss_network_module"] == "networks.lora" and "showroom_lora" not in metadata
    assert metadata["ss_base_model_version"] == ("sdxl_base_v1-0" if case.sdxl else "sd_v1")


def test_the_stored_metadata_is_kept_but_the_alpha_it_gives_is_the_files(tiny_model):
    """A trained file carries kohya's and the model spec's keys (docs/TRAINING.md); its alpha is now the rank."""
    tensors, metadata = read_safetensors(normalize_upload(make_lora(tiny_model, seed=12)))
    said = {"modelspec.trigger_phrase": "zwx bottle", "ss_network_alpha": "1", "ss_base_model_version": "sd_v1"}
    exported = read_safetensors(to_kohya(write_safetensors(tensors, metadata | said)))[1]
    assert exported["modelspec.trigger_phrase"] == "zwx bottle" and exported["ss_base_model_version"] == "sd_v1"
    assert exported["ss_network_alpha"] == "4" and exported["source_format"] == "diffusers"
    named = read_safetensors(to_kohya(write_safetensors(tensors, metadata | said), trigger="other", title="jar"))[1]
    assert named["modelspec.trigger_phrase"] == "other", "the product's trigger: what Showroom prompts it with"
    assert named["modelspec.title"] == named["ss_output_name"] == "jar", "the product's name where the file has none"


def test_an_uploaded_lora_takes_the_catalog_products_words(tiny_model):
    """A LoRA whose file says nothing of itself: the catalog's trigger and name go in."""
    exported = read_safetensors(to_kohya(normalize_upload(make_lora(tiny_model, seed=13)), trigger="qwz jar",
                                         title="jar"))[1]
    assert exported["modelspec.trigger_phrase"] == "qwz jar" and exported["modelspec.title"] == "jar"


def test_an_uploaded_lora_is_given_back_with_its_authors_words_and_the_products_trigger(tiny_model):
    """Its own ss_*/modelspec.* keys were stored (normalize_lora): the download still says what its author wrote,
    but prompts with the trigger Showroom prompts it with; the alpha it names is the export's own."""
    tensors, metadata = read_safetensors(wild_loras.kohya_lora(tiny_model, seed=14, alpha=1.0))
    author = {"modelspec.title": "Amber bottle v2", "modelspec.trigger_phrase": "amber bottle",
              "modelspec.description": "An amber glass bottle", "modelspec.author": "Ada Lovelace",
              "modelspec.license": "CreativeML Open RAIL-M", "ss_output_name": "amberBottle_v2",
              "ss_tag_frequency": json.dumps({"10_amber": {"amber bottle": 12}})}
    stored = normalize_lora(write_safetensors(tensors, metadata | author), str(tiny_model))
    exported = read_safetensors(to_kohya(stored, sdxl=False, trigger="zwx bottle", title="amber-bottle"))[1]
    assert exported["modelspec.trigger_phrase"] == "zwx bottle"
    assert {key: exported[key] for key in author if key != "modelspec.trigger_phrase"} == {
        key: value for key, value in author.items() if key != "modelspec.trigger_phrase"}
    assert (exported["ss_network_dim"], exported["ss_network_alpha"]) == (str(wild_loras.RANK),) * 2
    assert read_safetensors(to_kohya(stored))[1]["modelspec.trigger_phrase"] == "amber bottle", "no product's: its own"


def test_ranks_that_differ_leave_the_files_network_alpha_out(tiny_model):
    """The stored file folded each module's alpha in, and the export's alphas are the ranks: one alpha no longer
    says them."""
    tensors, metadata = read_safetensors(normalize_upload(make_lora(tiny_model, seed=15)))
    first = sorted(k for k in tensors if k.endswith(".lora_A.weight"))[0].removesuffix(".lora_A.weight")
    down, up = tensors[f"{first}.lora_A.weight"].array(), tensors[f"{first}.lora_B.weight"].array()
    tensors[f"{first}.lora_A.weight"] = Tensor.from_array(down[:1], "F32")
    tensors[f"{first}.lora_B.weight"] = Tensor.from_array(up[:, :1], "F32")
    said = metadata | {"ss_network_dim": "4", "ss_network_alpha": "1", "ss_network_module": "lycoris.kohya",
                       "ss_network_args": '{"algo": "locon"}'}
    exported = read_safetensors(to_kohya(write_safetensors(tensors, said)))[1]
    assert "ss_network_alpha" not in exported and "ss_network_dim" not in exported, "no one rank to name"
    assert exported["ss_network_module"] == "networks.lora" and "ss_network_args" not in exported, \
        "a plain LoRA now, whatever network the upload was made with"


def test_sd_export_of_a_kohya_file_has_kohyas_own_keys(tiny_model):
    """kohya trains SD 1.x on diffusers' module names: a kohya file goes through Showroom and out with its keys."""
    original = wild_loras.kohya_lora(tiny_model, seed=7)
    exported = to_kohya(normalize_upload(original))
    assert set(read_safetensors(exported)[0]) == set(read_safetensors(original)[0])


# ----- (b) diffusers' own kohya reader: the same change to the UNet and the text encoders -----

def outputs(pipe, sdxl: bool) -> dict[str, torch.Tensor]:
    """The UNet's noise prediction and each text encoder's hidden states on fixed inputs."""
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 16, 16, generator=gen)
    context = torch.randn(1, 8, pipe.unet.config.cross_attention_dim, generator=gen)
    extra = {}
    if sdxl:
        extra = {"added_cond_kwargs": {"text_embeds": torch.randn(1, pipe.text_encoder_2.config.projection_dim,
                                                                  generator=gen),
                                       "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}}
    ids = torch.tensor([[pipe.tokenizer.bos_token_id, 40, 41, 42, pipe.tokenizer.eos_token_id]])
    with torch.no_grad():
        found = {"unet": pipe.unet(latents, torch.tensor([500]), context, **extra).sample,
                 "text_encoder": pipe.text_encoder(ids)[0]}
        if sdxl:
            found["text_encoder_2"] = pipe.text_encoder_2(ids)[0]
    return found


def fresh_pipe(model: Path, sdxl: bool):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    cls = StableDiffusionXLPipeline if sdxl else StableDiffusionPipeline
    pipe = cls.from_pretrained(model, **({} if sdxl else {"safety_checker": None, "requires_safety_checker": False}))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_diffusers_kohya_loader_changes_the_model_as_showroom_does(case, tmp_path):
    sdxl = case.sdxl
    (tmp_path / "stored.safetensors").write_bytes(case.stored)
    (tmp_path / "kohya.safetensors").write_bytes(case.kohya)
    pipe = fresh_pipe(case.model, sdxl)
    base = outputs(pipe, sdxl)
    load_lora_into(pipe, tmp_path / "stored.safetensors", "showroom")
    ours = outputs(pipe, sdxl)
    pipe = fresh_pipe(case.model, sdxl)
    pipe.load_lora_weights(str(tmp_path), weight_name="kohya.safetensors", adapter_name="elsewhere")
    theirs = outputs(pipe, sdxl)
    changed = {part for part in base if (ours[part] - base[part]).abs().max() > 1e-3}
    assert "unet" in changed, "the LoRA must change the UNet for this check to mean anything"
    if case.text_parts:
        assert changed == set(base), "and the text encoders it has weights for"
    for part in base:
        torch.testing.assert_close(theirs[part], ours[part], atol=1e-4, rtol=1e-4, msg=part)


# ----- what cannot be exported, and what is left out -----

def test_a_text_encoder_lora_is_named_for_sdxl_when_the_file_cannot_tell(tiny_sdxl):
    stored = normalize_upload(wild_loras.diffusers_lora(tiny_sdxl, seed=8))
    tensors, metadata = read_safetensors(stored)
    te_only = {k: t for k, t in tensors.items() if k.startswith("text_encoder.")}
    data = write_safetensors(te_only, metadata)
    assert all(k.startswith("lora_te1_") for k in read_safetensors(to_kohya(data, sdxl=True))[0])
    assert all(k.startswith("lora_te_") for k in read_safetensors(to_kohya(data))[0])


def test_a_cloneofsimo_lora_is_refused_with_the_reason(tiny_model):
    stored = normalize_upload(wild_loras.cloneofsimo_lora(tiny_model, seed=9))
    with pytest.raises(NotExportable, match="cloneofsimo's layout"):
        to_kohya(stored)


def test_token_embeddings_are_left_out_and_named_in_the_metadata(tiny_model):
    tensors, metadata = read_safetensors(normalize_upload(make_lora(tiny_model, seed=10)))
    tensors["embedding:<s1>"] = Tensor.from_array(np.ones(16, dtype=np.float32), "F32")
    tensors, metadata = read_safetensors(to_kohya(write_safetensors(tensors, metadata)))
    assert not any("s1" in k for k in tensors)
    assert '"<s1>"' in metadata["showroom_left_out"]


def test_export_does_not_import_torch(tmp_path, tiny_model):
    (tmp_path / "l.safetensors").write_bytes(normalize_upload(make_lora(tiny_model, seed=11)))
    code = ("import sys; from pathlib import Path; from backend.lora.kohya_export import to_kohya; "
            f"to_kohya(Path({str(tmp_path / 'l.safetensors')!r}).read_bytes()); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60,
                            env=os.environ | {"PYTHONPATH": str(root)})
    assert result.returncode == 0, result.stderr
