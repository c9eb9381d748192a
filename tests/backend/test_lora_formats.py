"""LoRA import: synthetic files in each layout's documented key scheme, built against the tiny model, must load
into the pipeline with exactly their up/down matrices (alpha/rank included); anything else is refused with a reason."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save

from backend.lora.check import WrongBaseModel, normalize_lora
from backend.lora.formats import normalize_upload
from backend.lora.loading import load_lora_into
from backend.lora.safetensors_file import LoraFormatError, read_safetensors

pytestmark = pytest.mark.usefixtures("torch_one_thread")


RANK = 2
UNET_ATTN = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_ATTN = ("q_proj", "k_proj", "v_proj", "out_proj")


@pytest.fixture
def pipe(tiny_model):
    from diffusers import StableDiffusionPipeline

    p = StableDiffusionPipeline.from_pretrained(tiny_model, safety_checker=None, requires_safety_checker=False)
    p.set_progress_bar_config(disable=True)
    return p


def layer_targets(model, classes: tuple[str, ...], leaves: tuple[str, ...]) -> list[str]:
    return [f"{name}.{leaf}" for name, m in model.named_modules() if type(m).__name__ in classes for leaf in leaves]


def random_pairs(pipe, modules: dict[str, list[str]], seed: int = 0, rank: int = RANK) -> dict[str, tuple]:
    """{'<component>.<module>': (down, up)} with random weights shaped for the tiny model's layers."""
    gen = torch.Generator().manual_seed(seed)
    pairs = {}
    for component, names in modules.items():
        for name in names:
            layer = getattr(pipe, component).get_submodule(name)
            if isinstance(layer, torch.nn.Conv2d):
                down_shape, up_shape = (rank, layer.in_channels, *layer.kernel_size), (layer.out_channels, rank, 1, 1)
            else:
                down_shape, up_shape = (rank, layer.in_features), (layer.out_features, rank)
            pairs[f"{component}.{name}"] = (torch.randn(down_shape, generator=gen),
                                            torch.randn(up_shape, generator=gen))
    return pairs


def attention_pairs(pipe, seed: int = 0) -> dict[str, tuple]:
    return random_pairs(pipe, {"unet": layer_targets(pipe.unet, ("Attention",), UNET_ATTN),
                               "text_encoder": layer_targets(pipe.text_encoder, ("CLIPAttention",), TEXT_ATTN)}, seed)


def import_lora(pipe, tmp_path: Path, data: bytes, adapter: str = "product") -> list[str]:
    path = tmp_path / f"{adapter}.safetensors"
    path.write_bytes(normalize_upload(data))
    return load_lora_into(pipe, path, adapter)


def assert_loaded(pipe, pairs: dict[str, tuple], adapter: str = "product", scale: float = 1.0) -> None:
    """The peft layers hold the file's matrices: lora_A == down, lora_B * scaling == up * alpha / rank."""
    assert pairs
    for target, (down, up) in pairs.items():
        component, _, name = target.partition(".")
        layer = getattr(pipe, component).get_submodule(name)
        torch.testing.assert_close(layer.lora_A[adapter].weight, down, msg=target)
        torch.testing.assert_close(layer.lora_B[adapter].weight * layer.scaling[adapter], up * scale, msg=target)


def kohya_name(target: str) -> str:
    component, _, name = target.partition(".")
    return {"unet": "lora_unet_", "text_encoder": "lora_te_"}[component] + name.replace(".", "_")


# ----- each layout -----

def test_import_diffusers_layout(pipe, tmp_path):
    pairs = attention_pairs(pipe)
    sd = {}
    for t, (down, up) in pairs.items():
        sd |= {f"{t}.lora_A.weight": down, f"{t}.lora_B.weight": up}
    assert import_lora(pipe, tmp_path, save(sd)) == []
    assert_loaded(pipe, pairs)


def test_import_old_diffusers_layout_with_alphas(pipe, tmp_path):
    """diffusers before peft: `.lora.down.weight` / `.lora_linear_layer.up.weight`, alphas as `<module>.alpha`."""
    pairs = attention_pairs(pipe, seed=1)
    sd = {}
    for t, (down, up) in pairs.items():
        infix = "lora_linear_layer" if t.startswith("text_encoder") else "lora"
        sd |= {f"{t}.{infix}.down.weight": down, f"{t}.{infix}.up.weight": up, f"{t}.alpha": torch.tensor(1.0)}
    import_lora(pipe, tmp_path, save(sd))
    assert_loaded(pipe, pairs, scale=1.0 / RANK)


def test_import_diffusers_layout_with_adapter_metadata(pipe, tmp_path):
    """save_lora_weights(..., unet_lora_adapter_metadata=LoraConfig.to_dict()): lora_alpha and alpha_pattern."""
    pairs = random_pairs(pipe, {"unet": layer_targets(pipe.unet, ("Attention",), UNET_ATTN)}, seed=7)
    sd = {}
    for t, (down, up) in pairs.items():
        sd |= {f"{t}.lora_A.weight": down, f"{t}.lora_B.weight": up}
    config = {"unet.r": RANK, "unet.lora_alpha": 1, "unet.alpha_pattern": {"attn1.to_q": 8}}
    import_lora(pipe, tmp_path, save(sd, {"lora_adapter_metadata": json.dumps(config)}))
    assert_loaded(pipe, {t: p for t, p in pairs.items() if not t.endswith("attn1.to_q")}, scale=1 / RANK)
    assert_loaded(pipe, {t: p for t, p in pairs.items() if t.endswith("attn1.to_q")}, scale=8 / RANK)


def test_import_peft_layout(pipe, tmp_path):
    """peft's save_pretrained of a peft-wrapped UNet: `base_model.model.<module>.lora_A.weight`."""
    pairs = random_pairs(pipe, {"unet": layer_targets(pipe.unet, ("Attention",), UNET_ATTN)}, seed=2)
    sd = {}
    for t, (down, up) in pairs.items():
        name = t.removeprefix("unet.")
        sd |= {f"base_model.model.{name}.lora_A.weight": down, f"base_model.model.{name}.lora_B.weight": up}
    import_lora(pipe, tmp_path, save(sd))
    assert_loaded(pipe, pairs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_import_kohya_layout(pipe, tmp_path, dtype):
    """kohya sd-scripts: `lora_unet_<module with _>.lora_down.weight`, `.lora_up.weight`, `.alpha` (scale alpha/rank);
    it also trains the transformer's 1x1 conv proj_in/proj_out and the feed-forward, and the text encoder's MLP."""
    unet = layer_targets(pipe.unet, ("Attention",), UNET_ATTN) + layer_targets(
        pipe.unet, ("Transformer2DModel",), ("proj_in", "proj_out")) + layer_targets(
        pipe.unet, ("BasicTransformerBlock",), ("ff.net.0.proj", "ff.net.2"))
    text = layer_targets(pipe.text_encoder, ("CLIPAttention",), TEXT_ATTN) + layer_targets(
        pipe.text_encoder, ("CLIPMLP",), ("fc1", "fc2"))
    pairs = random_pairs(pipe, {"unet": unet, "text_encoder": text}, seed=3)
    pairs = {t: (d.to(dtype).float(), u.to(dtype).float()) for t, (d, u) in pairs.items()}  # exact in bf16
    alpha = 1.0
    sd = {}
    for t, (down, up) in pairs.items():
        sd |= {f"{kohya_name(t)}.lora_down.weight": down.to(dtype), f"{kohya_name(t)}.lora_up.weight": up.to(dtype),
               f"{kohya_name(t)}.alpha": torch.tensor(alpha, dtype=dtype)}
    assert read_safetensors(normalize_upload(save(sd)))[1]["source_format"] == "kohya"
    import_lora(pipe, tmp_path, save(sd))
    tolerance = {} if dtype == torch.float32 else {"rtol": 1e-2, "atol": 1e-2}  # alpha/rank folded into bf16 up
    for target, (down, up) in pairs.items():
        component, _, name = target.partition(".")
        layer = getattr(pipe, component).get_submodule(name)
        torch.testing.assert_close(layer.lora_A["product"].weight, down, msg=target)
        torch.testing.assert_close(layer.lora_B["product"].weight * layer.scaling["product"], up * alpha / RANK,
                                   msg=target, **tolerance)


def cloneofsimo_order(model, classes: set[str], legacy: bool) -> list[str]:
    """lora_diffusion's injection order: every module of a target class in model.modules() order, then the Linear
    layers inside it. `legacy`: the diffusers it ran on registered a transformer block's ff between attn1 and attn2."""
    found = [f"{name}.{sub}" for name, m in model.named_modules() if type(m).__name__ in classes
             for sub, child in m.named_modules() if isinstance(child, torch.nn.Linear)]
    if legacy:
        def block(name: str) -> str:
            return name.split(".attn1.")[0].split(".attn2.")[0].split(".ff.")[0]

        blocks = list(dict.fromkeys(block(n) for n in found))
        found = sorted(found, key=lambda n: (blocks.index(block(n)), 0 if ".attn1." in n else 1 if ".ff." in n else 2))
    return found


@pytest.mark.parametrize("legacy", [False, True], ids=["current-diffusers", "diffusers-0.11"])
def test_import_cloneofsimo_layout_with_token_embedding(pipe, tmp_path, legacy):
    """lora_diffusion's save_safeloras_with_embeds: `unet:{i}:up|down`, `text_encoder:{i}:up|down`, `<s1>`."""
    unet_order = cloneofsimo_order(pipe.unet, {"Attention", "GEGLU"}, legacy)
    text_order = cloneofsimo_order(pipe.text_encoder, {"CLIPAttention"}, legacy=False)
    assert len(unet_order) == 4 * 9 and unet_order[0].endswith("attn1.to_q")
    assert unet_order[4].endswith("ff.net.0.proj" if legacy else "attn2.to_q")
    pairs = random_pairs(pipe, {"unet": unet_order, "text_encoder": text_order}, seed=4)
    sd, metadata = {}, {"unet": '["CrossAttention", "Attention", "GEGLU"]', "text_encoder": '["CLIPAttention"]'}
    for component, order in (("unet", unet_order), ("text_encoder", text_order)):
        for i, name in enumerate(order):
            down, up = pairs[f"{component}.{name}"]
            sd |= {f"{component}:{i}:up": up, f"{component}:{i}:down": down}
            metadata[f"{component}:{i}:rank"] = str(RANK)
    embedding = torch.randn(pipe.text_encoder.config.hidden_size)
    sd["<s1>"], metadata["<s1>"] = embedding, "<embed>"
    assert import_lora(pipe, tmp_path, save(sd, metadata)) == ["<s1>"]
    assert_loaded(pipe, pairs)
    token_id = pipe.tokenizer.convert_tokens_to_ids("<s1>")
    assert pipe.tokenizer.tokenize("a <s1> bottle").count("<s1>") == 1
    torch.testing.assert_close(pipe.text_encoder.get_input_embeddings().weight[token_id], embedding)


def test_trained_layout_survives_normalize_unchanged(pipe, tiny_model):
    """What save_lora_weights writes (our trainer's output) is already canonical: same tensors, same bytes each."""
    from tests.factories import make_lora

    raw = make_lora(tiny_model, seed=5)
    before, _ = read_safetensors(raw)
    after, metadata = read_safetensors(normalize_upload(raw))
    assert metadata["source_format"] == "diffusers" and metadata["showroom_lora"] == "1"
    assert {k: (t.dtype, t.shape, t.raw) for k, t in before.items()} == {k: (t.dtype, t.shape, t.raw)
                                                                          for k, t in after.items()}


def test_normalize_upload_does_not_import_torch(tmp_path, tiny_model):
    from tests.factories import make_lora

    (tmp_path / "l.safetensors").write_bytes(make_lora(tiny_model, seed=6))
    code = ("import sys; from pathlib import Path; from backend.lora.formats import normalize_upload; "
            f"normalize_upload(Path({str(tmp_path / 'l.safetensors')!r}).read_bytes()); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60,
                            env=os.environ | {"PYTHONPATH": str(root)})
    assert result.returncode == 0, result.stderr


# ----- refusals against the model -----

def test_refuses_a_truncated_file(pipe):
    data = save({f"{t}.lora_A.weight": d for t, (d, u) in attention_pairs(pipe).items()})
    with pytest.raises(LoraFormatError, match="truncated"):
        normalize_upload(data[:-10])


def test_refuses_wrong_shapes_for_the_base_model(pipe, tmp_path, tiny_model):
    """Rank-consistent, so the layout converts; the upload refuses it against the model's config (test_lora_base.py),
    and a file stored without that check (before it existed, or before the model's config was on the machine) is
    refused by the worker, which finds in-features 768 where the tiny model has 16."""
    target = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"
    data = save({f"{target}.lora_A.weight": torch.randn(RANK, 768), f"{target}.lora_B.weight": torch.randn(16, RANK)})
    with pytest.raises(WrongBaseModel, match=r"768-wide cross-attention \(SD 1\.x\); .* with 16-wide"):
        normalize_lora(data, str(tiny_model))
    with pytest.raises(LoraFormatError, match=r"shape mismatch at .*attn2\.to_k.*SD 1\.x"):
        import_lora(pipe, tmp_path, data)
    assert not any(pipe.get_list_adapters().values())


def test_refuses_an_sdxl_lora_on_an_sd_model(pipe, tmp_path, tiny_model):
    sd = {"lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.randn(RANK, 16),
          "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": torch.randn(16, RANK)}
    with pytest.raises(WrongBaseModel, match="text_encoder_2.*SDXL"):
        normalize_lora(save(sd), str(tiny_model))
    with pytest.raises(LoraFormatError, match="SDXL.*text encoder 2"):
        import_lora(pipe, tmp_path, save(sd))


@pytest.mark.parametrize("kohya, diffusers", [
    ("input_blocks_4_1_transformer_blocks_0_attn1_to_q", "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"),
    ("input_blocks_1_0_in_layers_2", "down_blocks.0.resnets.0.conv1"),
    ("input_blocks_3_0_op", "down_blocks.0.downsamplers.0.conv"),
    ("middle_block_1_proj_in", "mid_block.attentions.0.proj_in"),
    ("middle_block_2_emb_layers_1", "mid_block.resnets.1.time_emb_proj"),
    ("output_blocks_5_1_transformer_blocks_1_ff_net_0_proj",
     "up_blocks.1.attentions.2.transformer_blocks.1.ff.net.0.proj"),
    ("output_blocks_2_2_conv", "up_blocks.0.upsamplers.0.conv"),
    ("output_blocks_0_0_skip_connection", "up_blocks.0.resnets.0.conv_shortcut"),
    ("down_blocks_2_resnets_1_time_emb_proj", "down_blocks.2.resnets.1.time_emb_proj"),
])
def test_kohya_sdxl_unet_names_map_to_diffusers(kohya, diffusers):
    """kohya trains SDXL on the original (sgm) UNet: its names map onto diffusers' blocks of 2 layers (+ sampler)."""
    from backend.lora.formats import _kohya_target

    assert _kohya_target("unet", kohya) == f"unet.{diffusers}"
