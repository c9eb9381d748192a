"""A LoRA made for another base model is refused at upload, with the widths that differ, and nothing is stored;
the base model's widths come from its config files (local folder or Hugging Face cache), never from its weights."""

import json
import logging
import re
import shutil

import numpy as np
import pytest
from safetensors.numpy import save

from backend.lora import check as lora_check
from backend.lora.check import WrongBaseModel, find_base_model, normalize_lora
from backend.lora.safetensors_file import LoraFormatError
from tests.factories import make_lora

RANK = 2
BLOCK = "down_blocks.1.attentions.0.transformer_blocks.0"  # the tiny UNet's 16-channel transformer block
LYCORIS = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
TEXT_LAYER = "text_model.encoder.layers.0"


@pytest.fixture(autouse=True)
def fresh_lookup(monkeypatch):
    monkeypatch.setattr(lora_check, "_FOUND", {})


def pair(target: str, width_in: int, width_out: int, rank: int = RANK) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {f"{target}.lora_A.weight": rng.standard_normal((rank, width_in), dtype=np.float32),
            f"{target}.lora_B.weight": rng.standard_normal((width_out, rank), dtype=np.float32)}


def kohya_pair(name: str, width_in: int, width_out: int) -> dict[str, np.ndarray]:
    return {f"{name}.lora_down.weight": np.ones((RANK, width_in), np.float32),
            f"{name}.lora_up.weight": np.ones((width_out, RANK), np.float32), f"{name}.alpha": np.float32([1.0])}


def every_layer_lora(tiny_model) -> bytes:
    """A kohya-style LoRA on every Linear and Conv2d of the tiny UNet and text encoder: all widths right."""
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    tensors = {}
    for component, model in (("unet", UNet2DConditionModel.from_pretrained(tiny_model, subfolder="unet")),
                             ("text_encoder", CLIPTextModel.from_pretrained(tiny_model, subfolder="text_encoder"))):
        for name, layer in model.named_modules():
            if isinstance(layer, torch.nn.Linear):
                tensors |= pair(f"{component}.{name}", layer.in_features, layer.out_features)
            elif isinstance(layer, torch.nn.Conv2d) and layer.kernel_size == (1, 1):
                tensors |= {k: v.reshape(*v.shape, 1, 1) for k, v in pair(
                    f"{component}.{name}", layer.in_channels, layer.out_channels).items()}
    return save(tensors)


# ----- what the model is -----

def test_find_base_model_reads_the_config_files(tiny_model):
    base = find_base_model(str(tiny_model))
    assert (base.cross_attention_dim, base.block_out_channels) == (16, (8, 16))
    assert set(base.text_encoders) == {"text_encoder"} and base.text_encoders["text_encoder"]["hidden_size"] == 16


def test_find_base_model_in_the_hugging_face_cache(tiny_model, tmp_path, monkeypatch):
    import huggingface_hub.constants

    snapshot = tmp_path / "models--acme--tiny-sd" / "snapshots" / "abc123"
    for name in ("model_index.json", "unet/config.json", "text_encoder/config.json"):
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(tiny_model / name, snapshot / name)
    (tmp_path / "models--acme--tiny-sd" / "refs").mkdir()
    (tmp_path / "models--acme--tiny-sd" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    assert find_base_model("acme/tiny-sd").cross_attention_dim == 16
    with pytest.raises(WrongBaseModel, match="1024-wide cross-attention"):
        normalize_lora(save(pair(f"unet.{BLOCK}.attn2.to_k", 1024, 16)), "acme/tiny-sd")


@pytest.mark.parametrize("model_id", ["acme/not-downloaded", "/no/such/folder"])
def test_a_model_whose_config_is_not_here_skips_the_check_and_says_so(model_id, tmp_path, monkeypatch, caplog):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="showroom.lora"):
        assert normalize_lora(save(pair(f"unet.{BLOCK}.attn2.to_k", 1024, 16)), model_id)
    assert "not checked against the base model" in caplog.text
    assert find_base_model(model_id) is None and not lora_check._FOUND  # looked up again at the next upload


# ----- what passes -----

def test_loras_that_fit_the_model_pass(tiny_model):
    normalize_lora(make_lora(tiny_model, seed=1), str(tiny_model))
    normalize_lora(every_layer_lora(tiny_model), str(tiny_model))
    embedding = {"<s1>": np.ones(16, np.float32)}
    normalize_lora(save(pair(f"unet.{BLOCK}.attn2.to_k", 16, 16) | embedding, {"<s1>": "<embed>"}), str(tiny_model))
    cloneofsimo = {"unet:0:down": np.ones((RANK, 16), np.float32), "unet:0:up": np.ones((16, RANK), np.float32)}
    normalize_lora(save(cloneofsimo), str(tiny_model))


# The real models' widths, as their config files give them, and LoRAs on their attention layers.
SD15 = {"cross": 768, "channels": [320, 640, 1280, 1280], "text": {"text_encoder": (768, 12)},
        "down": (0, 1, 2), "up": (1, 2, 3)}
SDXL = {"cross": 2048, "channels": [320, 640, 1280], "text": {"text_encoder": (768, 12), "text_encoder_2": (1280, 32)},
        "down": (1, 2), "up": (0, 1)}


def write_config(folder, model: dict):
    index = {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
             "text_encoder_2": [None, None]}
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "config.json").write_text(json.dumps(
        {"cross_attention_dim": model["cross"], "block_out_channels": model["channels"]}))
    for component, (width, layers) in model["text"].items():
        index[component] = ["transformers", "CLIPTextModel"]
        (folder / component).mkdir()
        (folder / component / "config.json").write_text(json.dumps(
            {"hidden_size": width, "num_hidden_layers": layers, "intermediate_size": 4 * width}))
    (folder / "model_index.json").write_text(json.dumps(index))
    return str(folder)


def attention_lora(model: dict) -> bytes:
    channels, tensors = model["channels"], {}
    blocks = [(f"down_blocks.{i}", channels[i]) for i in model["down"]] + [
        (f"up_blocks.{i}", channels[::-1][i]) for i in model["up"]] + [("mid_block", channels[-1])]
    for block, width in blocks:
        prefix = f"unet.{block}.attentions.0"
        tensors |= pair(f"{prefix}.proj_in", width, width) | pair(f"{prefix}.transformer_blocks.0.attn1.to_q",
                                                                  width, width)
        tensors |= pair(f"{prefix}.transformer_blocks.0.attn2.to_k", model["cross"], width)
        tensors |= pair(f"{prefix}.transformer_blocks.0.ff.net.2", 4 * width, width)
    for component, (width, layers) in model["text"].items():
        tensors |= pair(f"{component}.text_model.encoder.layers.{layers - 1}.self_attn.q_proj", width, width)
    return save(tensors)


def test_real_model_widths(tmp_path):
    sd15, sdxl = write_config(tmp_path / "sd15", SD15), write_config(tmp_path / "sdxl", SDXL)
    normalize_lora(attention_lora(SD15), sd15)
    normalize_lora(attention_lora(SDXL), sdxl)
    with pytest.raises(WrongBaseModel, match=r"text_encoder_2, so it was made for a model with one \(SDXL\)"):
        normalize_lora(attention_lora(SDXL), sd15)
    with pytest.raises(WrongBaseModel, match=r"768-wide cross-attention \(SD 1\.x\); .* with 2048-wide"):
        normalize_lora(attention_lora(SD15), sdxl)
    sd2 = SD15 | {"cross": 1024, "text": {"text_encoder": (1024, 23)}}
    with pytest.raises(WrongBaseModel, match=r"1024-wide cross-attention \(SD 2\.x\); .* with 768-wide"):
        normalize_lora(attention_lora(sd2), sd15)


# ----- what is refused, and why -----

@pytest.mark.parametrize("tensors, metadata, message", [
    (pair(f"unet.{BLOCK}.attn2.to_k", 1024, 16), None,
     r"made for a model with 1024-wide cross-attention \(SD 2\.x\); this backend runs .* "
     r"with 16-wide cross-attention \(at unet\."),
    (pair("unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_v", 2048, 16), None,
     r"2048-wide cross-attention \(SDXL\)"),
    (kohya_pair("lora_te2_text_model_encoder_layers_0_self_attn_q_proj", 1280, 1280)
     | kohya_pair("lora_te1_text_model_encoder_layers_0_self_attn_q_proj", 768, 768), None,
     r"weights for a text_encoder_2, so it was made for a model with one \(SDXL\); .* which has none"),
    (pair(f"text_encoder.{TEXT_LAYER}.self_attn.q_proj", 1024, 1024), None,
     r"made for a 1024-wide text_encoder \(SD 2\.x\); .* whose text_encoder is 16 wide"),
    (pair(f"text_encoder.{TEXT_LAYER}.self_attn.out_proj", 16, 768), None, r"768-wide text_encoder"),
    (pair(f"text_encoder.{TEXT_LAYER}.self_attn.v_proj", 16, 1024), None, r"1024-wide text_encoder"),
    (pair("text_encoder.text_model.encoder.layers.11.mlp.fc1", 16, 32), None, r"has 2 layers"),
    (pair(f"unet.{BLOCK}.attn1.to_q", 640, 16), None, r"attn1\.to_q reads 640 values, that layer of .* reads 16;"),
    (pair(f"unet.{BLOCK}.ff.net.2", 64, 1280), None, r"ff\.net\.2 writes 1280 values, that layer of .* writes 16;"),
    (pair("unet.up_blocks.3.attentions.0.proj_in", 320, 320), None, r"has 2 up_blocks"),
    ({"unet:0:down": np.ones((RANK, 1024), np.float32), "unet:0:up": np.ones((16, RANK), np.float32)}, None,
     r"cloneofsimo LoRA has a unet layer that reads 1024 values \(as SD 2\.x does\)"),
    (pair(f"unet.{BLOCK}.attn2.to_k", 16, 16) | {"<s1>": np.ones(768, np.float32)}, {"<s1>": "<embed>"},
     r"token embedding '<s1>' is 768 wide; .* text encoder is 16 wide"),
], ids=["sd2-cross-attention", "sdxl-cross-attention", "sdxl-text-encoder-2", "sd2-text-encoder",
        "text-encoder-out", "text-encoder-up-only", "text-encoder-layers", "block-width-in", "block-width-out", "block-count",
        "cloneofsimo", "token-embedding"])
def test_a_lora_for_another_base_model_is_refused(tiny_model, tensors, metadata, message):
    with pytest.raises(WrongBaseModel, match=message):
        normalize_lora(save(tensors, metadata), str(tiny_model))


def embedding_lora(token: str, vector: np.ndarray) -> bytes:
    """A cloneofsimo LoRA whose token embedding is named `token`."""
    cloneofsimo = {"unet:0:down": np.ones((RANK, 16), np.float16), "unet:0:up": np.ones((16, RANK), np.float16)}
    return save(cloneofsimo | {token: vector}, {"unet": '["Attention"]', "unet:0:rank": str(RANK), token: "<embed>"})


@pytest.mark.parametrize("token, vector, clash", [
    ("a</w>", np.ones(16, np.float32), "a</w>"),
    ("<|endoftext|>", np.ones(16, np.float32), "<|endoftext|>"),
    ("a", np.ones((2, 16), np.float32), "a"),         # its rows would be a and a_1
], ids=["word", "special", "multi-vector"])
def test_an_embedding_that_would_replace_a_token_of_the_base_vocabulary_is_refused(tiny_model, token, vector, clash):
    """Its row would change every prompt that uses the token, with or without the product."""
    assert "a</w>" in find_base_model(str(tiny_model)).vocabulary
    normalize_lora(embedding_lora("<s1>", vector), str(tiny_model))  # the same vectors under a token of their own
    with pytest.raises(LoraFormatError, match=rf"token embedding {re.escape(repr(token))} would replace "
                                              rf".*'s own token {re.escape(repr(clash))} .*rename the token"):
        normalize_lora(embedding_lora(token, vector), str(tiny_model))


def test_normalize_lora_checks_without_torch(tiny_model, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "l.safetensors").write_bytes(save(pair(f"unet.{BLOCK}.attn2.to_k", 1024, 16)))
    code = ("import sys; from pathlib import Path; from backend.lora.check import WrongBaseModel, normalize_lora\n"
            f"try: normalize_lora(Path({str(tmp_path / 'l.safetensors')!r}).read_bytes(), {str(tiny_model)!r})\n"
            "except WrongBaseModel: pass\n"
            "else: raise SystemExit('not refused')\n"
            "assert 'torch' not in sys.modules, 'torch was imported'")
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60,
                            env=os.environ | {"PYTHONPATH": str(root)})
    assert result.returncode == 0, result.stderr


# ----- over HTTP -----

def test_upload_lora_for_another_base_model_is_refused_and_nothing_stored(backend):
    before = backend.storage.list_files("products/")
    r = backend.add_product("sd2-bottle", "sks bottle", save(pair(f"unet.{BLOCK}.attn2.to_k", 1024, 16)))
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert "1024-wide cross-attention (SD 2.x)" in detail and "with 16-wide" in detail, detail
    assert backend.storage.list_files("products/") == before
    assert "sd2-bottle" not in [p["name"] for p in backend.get("/v1/catalog").json()["products"]]


def test_upload_sdxl_lora_is_refused(backend):
    before = backend.storage.list_files("products/")
    lora = kohya_pair("lora_te2_text_model_encoder_layers_0_self_attn_q_proj", 1280, 1280)
    r = backend.add_product("xl-bottle", "sks bottle", save(lora))
    assert r.status_code == 422 and "text_encoder_2" in r.json()["detail"], r.text
    assert backend.storage.list_files("products/") == before


NAN_UP = np.ones((16, RANK), np.float16)
NAN_UP[3, 1] = np.nan


@pytest.mark.parametrize("lora, reason", [
    (save({f"{LYCORIS}.hada_w1_a": np.ones((16, 2), np.float16), f"{LYCORIS}.hada_w1_b": np.ones((2, 16), np.float16),
           f"{LYCORIS}.hada_w2_a": np.ones((16, 2), np.float16), f"{LYCORIS}.hada_w2_b": np.ones((2, 16), np.float16),
           f"{LYCORIS}.alpha": np.array(1.0, np.float16)}), "LyCORIS LoHa weights are not supported, only plain LoRA"),
    (save({f"{LYCORIS}.lokr_w1": np.ones((4, 4), np.float16), f"{LYCORIS}.lokr_w2": np.ones((4, 4), np.float16),
           f"{LYCORIS}.alpha": np.array(1.0, np.float16)}), "LyCORIS LoKr weights are not supported"),
    (save({f"{LYCORIS}.lora_down.weight": np.ones((RANK, 16), np.float16), f"{LYCORIS}.lora_up.weight": NAN_UP,
           f"{LYCORIS}.alpha": np.array(1.0, np.float16)}), "holds NaN or infinite values: the training diverged"),
    (embedding_lora("<s1>", np.ones(768, np.float32)), "token embedding '<s1>' is 768 wide"),
    (embedding_lora("a</w>", np.ones(16, np.float32)), "would replace"),
], ids=["loha", "lokr", "nan", "embedding-width", "base-vocabulary-token"])
def test_upload_of_a_lora_that_cannot_work_is_refused_with_the_reason_and_nothing_stored(backend, lora, reason):
    before = backend.storage.list_files("products/")
    r = backend.add_product("odd-bottle", "<s1> bottle", lora)
    assert r.status_code == 422 and reason in r.json()["detail"], r.text
    assert backend.storage.list_files("products/") == before


def test_upload_lora_that_fits_is_stored(backend, tiny_model):
    r = backend.add_product("fits-bottle", "sks bottle", make_lora(tiny_model, seed=3))
    assert r.status_code == 201, r.text
    assert backend.storage.exists("products/fits-bottle.safetensors")
    assert json.loads(backend.storage.get("products/fits-bottle.json"))["trigger"] == "sks bottle"
