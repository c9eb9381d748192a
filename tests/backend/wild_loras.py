"""LoRA files as the tools in the wild write them, for the tiny models, and a tiny SDXL pipeline to load them into.

diffusers and peft files are written by diffusers and peft themselves. kohya and cloneofsimo files are built here
from our reading of the tools' published source (kohya-ss/sd-scripts `networks/lora.py`, cloneofsimo/lora
`lora_diffusion/lora.py`), with their key names, metadata and dtypes:
  kohya        `lora_unet_<module, dots as _>.lora_down.weight` / `.lora_up.weight` / `.alpha` (a 0-d tensor),
               on every Linear and 1x1 Conv2d under a Transformer2DModel and under the text encoders' CLIPAttention
               and CLIPMLP (`lora_te_`, or `lora_te1_`/`lora_te2_` on SDXL, whose UNet kohya names in the original
               `input_blocks`/`middle_block`/`output_blocks` layout); everything saved in fp16; `ss_*` metadata
  cloneofsimo  `unet:<i>:up` / `unet:<i>:down` (and `text_encoder:`), i = lora_diffusion's injection order on the
               diffusers of its time (a transformer block's ff registered between attn1 and attn2), up and down in
               fp16 (`extract_lora_as_tensor`), metadata `unet` / `text_encoder` = the target classes as a JSON
               list of a set, `<name>:<i>:rank`; token embeddings as fp32 (dim,) tensors named by their token, with
               metadata `<token>` = `<embed>` (`save_safeloras_with_embeds`)
"""

import json
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save

RANK = 2
STRENGTH = 1.0  # random LoRA weights at a scale that visibly changes the tiny models' pictures, without chaos


def build_tiny_sdxl(output: Path, tokenizer_dir: Path) -> Path:
    """The real SDXL classes at toy size (2 layers a block, as SDXL), with a fixed seed; the byte-level tokenizer
    serves both text encoders."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    text_config = CLIPTextConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.eos_token_id, hidden_size=16, intermediate_size=32,
                                 num_attention_heads=2, num_hidden_layers=2, vocab_size=len(tokenizer),
                                 max_position_embeddings=77, projection_dim=16)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2), attention_head_dim=(2, 4), use_linear_projection=True,
        cross_attention_dim=32, norm_num_groups=4, addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 16)
    vae = AutoencoderKL(block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=4, sample_size=64)
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=CLIPTextModel(text_config), text_encoder_2=CLIPTextModelWithProjection(text_config),
        tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, add_watermarker=False,
        scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                         steps_offset=1, timestep_spacing="leading"))
    pipe.save_pretrained(output, safe_serialization=True)
    return Path(output)


def components(model_dir: Path) -> dict:
    """Fresh copies of the model's LoRA-able parts (a LoRA builder may change them)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    model_dir = Path(model_dir)
    parts = {"unet": UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet"),
             "text_encoder": CLIPTextModel.from_pretrained(model_dir, subfolder="text_encoder")}
    if (model_dir / "text_encoder_2").is_dir():
        parts["text_encoder_2"] = CLIPTextModelWithProjection.from_pretrained(model_dir, subfolder="text_encoder_2")
    return parts


def is_sdxl(parts: dict) -> bool:
    return "text_encoder_2" in parts


def as_transformers_4(module: str) -> str:
    """A text encoder's module as transformers 4 named it, and so every LoRA on the hub: transformers 5 dropped
    CLIPTextModel's `text_model` level (`encoder.layers.0...` was `text_model.encoder.layers.0...`)."""
    return module if module.startswith("text_model.") else f"text_model.{module}"


def _random_pair(layer: torch.nn.Module, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(down, up) for a Linear or Conv2d, the shapes its LoRA has."""
    if isinstance(layer, torch.nn.Conv2d):
        down = (RANK, layer.in_channels, *layer.kernel_size)
        up = (layer.out_channels, RANK, 1, 1)
    else:
        down, up = (RANK, layer.in_features), (layer.out_features, RANK)
    scale = STRENGTH / RANK ** 0.5
    return torch.randn(down, generator=gen) * scale / down[1] ** 0.5, torch.randn(up, generator=gen) * scale


# ----- diffusers and peft: written by the libraries themselves -----

UNET_ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_ATTENTION = ["q_proj", "k_proj", "v_proj", "out_proj"]


def _add_peft_lora(model: torch.nn.Module, targets: list[str], seed: int, alpha: float) -> "object":
    from peft import LoraConfig

    config = LoraConfig(r=RANK, lora_alpha=alpha, init_lora_weights=False, target_modules=targets)
    model.add_adapter(config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * STRENGTH / p.shape[-1] ** 0.5)
    return config


def diffusers_lora(model_dir: Path, seed: int) -> bytes:
    """As diffusers' DreamBooth LoRA scripts save one: peft layers on the UNet and text encoder(s), their state dicts
    through `convert_state_dict_to_diffusers`, `save_lora_weights` with each LoraConfig as adapter metadata (so an
    alpha other than the rank travels in the file); text-encoder keys as the scripts wrote them with transformers 4
    (files written with transformers 5 are test_lora_formats.py's)."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    parts = components(model_dir)
    layers, metadata = {}, {}
    for i, (component, model) in enumerate(parts.items()):
        targets = UNET_ATTENTION if component == "unet" else TEXT_ATTENTION
        config = _add_peft_lora(model, targets, seed + i, alpha=RANK / 2)
        state = convert_state_dict_to_diffusers(get_peft_model_state_dict(model))
        if component != "unet":
            state = {as_transformers_4(k): v for k, v in state.items()}
        layers[f"{component}_lora_layers"] = state
        metadata[f"{component}_lora_adapter_metadata"] = config.to_dict()
    saver = StableDiffusionXLPipeline if is_sdxl(parts) else StableDiffusionPipeline
    with tempfile.TemporaryDirectory() as tmp:
        saver.save_lora_weights(tmp, **layers, **metadata, safe_serialization=True)
        return (Path(tmp) / "pytorch_lora_weights.safetensors").read_bytes()


def peft_lora(model_dir: Path, seed: int) -> bytes:
    """peft's own `save_pretrained` of a peft-wrapped UNet: `adapter_model.safetensors`, keys
    `base_model.model.<module>.lora_A.weight`; its alpha stays behind in adapter_config.json (here alpha = rank)."""
    from peft import LoraConfig, get_peft_model

    unet = components(model_dir)["unet"]
    model = get_peft_model(unet, LoraConfig(r=RANK, lora_alpha=RANK, init_lora_weights=False,
                                            target_modules=UNET_ATTENTION + ["proj_in", "proj_out"]))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * STRENGTH / p[0].numel() ** 0.5)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        return (Path(tmp) / "adapter_model.safetensors").read_bytes()


# ----- kohya sd-scripts -----

def _sgm_name(name: str, layers_per_block: int) -> str:
    """A diffusers transformer's name in the original (sgm) UNet layout kohya trains SDXL in."""
    parts = name.split(".")
    if parts[0] == "mid_block":
        return "middle_block.1"
    block, layer = int(parts[1]), int(parts[3])
    if parts[0] == "down_blocks":
        return f"input_blocks.{1 + block * (layers_per_block + 1) + layer}.1"
    return f"output_blocks.{block * (layers_per_block + 1) + layer}.1"


def kohya_lora(model_dir: Path, seed: int, alpha: float = 1.0) -> bytes:
    """networks/lora.py's LoRANetwork as `save_weights(..., dtype=torch.float16)` writes it."""
    parts = components(model_dir)
    sdxl = is_sdxl(parts)
    gen = torch.Generator().manual_seed(seed)
    prefixes = {"unet": "lora_unet", "text_encoder": "lora_te1" if sdxl else "lora_te", "text_encoder_2": "lora_te2"}
    tensors = {}
    for component, model in parts.items():
        classes = ("Transformer2DModel",) if component == "unet" else ("CLIPAttention", "CLIPMLP")
        for name, module in model.named_modules():
            if type(module).__name__ not in classes:
                continue
            if component == "unet" and sdxl:
                name = _sgm_name(name, model.config.layers_per_block)
            elif component != "unet":
                name = as_transformers_4(name)  # kohya's names come from transformers 4
            for child_name, child in module.named_modules():
                conv_1x1 = isinstance(child, torch.nn.Conv2d) and child.kernel_size == (1, 1)
                if type(child) is torch.nn.Linear or conv_1x1:
                    lora_name = f"{prefixes[component]}.{name}.{child_name}".replace(".", "_")
                    down, up = _random_pair(child, gen)
                    tensors |= {f"{lora_name}.lora_down.weight": down, f"{lora_name}.lora_up.weight": up,
                                f"{lora_name}.alpha": torch.tensor(alpha)}
    metadata = {"ss_network_module": "networks.lora", "ss_network_dim": str(RANK), "ss_network_alpha": str(alpha),
                "ss_base_model_version": "sdxl_base_v1-0" if sdxl else "sd_v1", "ss_v2": "False",
                "ss_output_name": "product", "ss_training_comment": "None",
                "modelspec.sai_model_spec": "1.0.0",
                "modelspec.architecture": f"stable-diffusion-{'xl-v1-base' if sdxl else 'v1'}/lora"}
    return save({k: v.to(torch.float16) for k, v in tensors.items()}, metadata)


# ----- cloneofsimo/lora (lora_diffusion) -----

UNET_TARGETS = {"CrossAttention", "Attention", "GEGLU"}  # UNET_DEFAULT_TARGET_REPLACE
TEXT_TARGETS = {"CLIPAttention"}                           # TEXT_ENCODER_DEFAULT_TARGET_REPLACE


def injection_order(model: torch.nn.Module, targets: set[str]) -> list[str]:
    """`_find_modules_v2`: each module of a target class in model.modules() order, then its Linear layers, on the
    module tree of diffusers 0.11, whose BasicTransformerBlock registered attn1, ff, attn2."""
    found = [f"{name}.{sub}" if sub else name for name, m in model.named_modules() if type(m).__name__ in targets
             for sub, child in m.named_modules() if isinstance(child, torch.nn.Linear)]

    def place(name: str) -> tuple:
        block, sep, rest = name.partition(".transformer_blocks.")
        if not sep:
            return (found.index(name),)
        index, _, leaf = rest.partition(".")
        first = found.index(next(n for n in found if n.startswith(f"{block}.transformer_blocks.{index}.")))
        return first, {"attn1": 0, "ff": 1, "attn2": 2}[leaf.split(".")[0]], found.index(name)

    return sorted(found, key=place)


def cloneofsimo_lora(model_dir: Path, seed: int, embeddings: dict[str, torch.Tensor] | None = None) -> bytes:
    """save_safeloras_with_embeds({"unet": ..., "text_encoder": ...}, embeds) on an SD 1.x model."""
    parts = components(model_dir)
    gen = torch.Generator().manual_seed(seed)
    tensors, metadata = {}, {}
    for component, targets in (("unet", UNET_TARGETS), ("text_encoder", TEXT_TARGETS)):
        model = parts[component]
        metadata[component] = json.dumps(list(targets))
        for i, name in enumerate(injection_order(model, targets)):
            down, up = _random_pair(model.get_submodule(name), gen)
            tensors |= {f"{component}:{i}:up": up.to(torch.float16), f"{component}:{i}:down": down.to(torch.float16)}
            metadata[f"{component}:{i}:rank"] = str(RANK)
    for token, vector in (embeddings or {}).items():
        tensors[token], metadata[token] = vector.to(torch.float32), "<embed>"
    return save(tensors, metadata)


def token_vectors(model_dir: Path, seed: int, tokens: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Learned embeddings for `tokens`: (dim,) each, far from the random base rows so that they show."""
    width = components(model_dir)["text_encoder"].config.hidden_size
    gen = torch.Generator().manual_seed(1000 + seed)
    return {token: torch.randn(width, generator=gen) for token in tokens}
