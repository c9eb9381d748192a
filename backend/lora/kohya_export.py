"""A stored LoRA written out in kohya's layout, the one AUTOMATIC1111, Forge and ComfyUI read (diffusers too).

numpy only, never torch: the frontend builds the file when the download button is clicked. It is the exact
inverse of formats.py's kohya reader, so `normalize_upload(to_kohya(stored))` gives back the stored tensors bit for
bit (tests/backend/test_kohya_export.py):
  `<component>.<module>.lora_A.weight`  ->  `<prefix>_<module, dots as _>.lora_down.weight`
  `<component>.<module>.lora_B.weight`  ->  `<prefix>_<module, dots as _>.lora_up.weight`, the same bytes
  `<prefix>_<module, dots as _>.alpha`  =  the module's rank, a 0-d F32 tensor: the stored file has alpha/rank
                                           folded into lora_B (every scale is 1), and alpha = rank keeps it 1, so
                                           the strength at weight 1.0 is what Showroom draws
  prefixes: `lora_unet`; `lora_te` (SD 1.x, 2.x), or `lora_te1` and `lora_te2` (SDXL)
UNet modules keep diffusers' names (`lora_unet_down_blocks_1_attentions_0_...`), which formats.py's reader takes
back unchanged and A1111, Forge, ComfyUI and diffusers map onto their own UNets, SDXL's included; text-encoder
modules keep transformers 4's names (`lora_te_text_model_encoder_layers_0_self_attn_q_proj`), as kohya's own.

The file's string metadata is kept (less `showroom_lora`, which marks Showroom's own layout): a trained file's, and
an uploaded file's own `ss_*` and `modelspec.*` keys (its author's title, description, licence, tag frequencies),
with kohya's `ss_network_module` and, where the file does not say, `ss_base_model_version` (A1111's LoRA tab shows
a LoRA with the checkpoints of that base model only); `ss_network_dim` and `ss_network_alpha` say the rank, as the
alphas do. The product's trigger words are the file's `modelspec.trigger_phrase`, over the file's own: they are what
Showroom prompts it with, and what the product's trigger was changed to since; its name is the title only where
the file names none.

Refused: a LoRA uploaded in cloneofsimo's layout: its modules are numbered, not named, and a number only names a
module against the model itself (in a worker, with torch). Left out: token embeddings (such as `<s1>`), which kohya's
layout has no place for; metadata `showroom_left_out` names them.
"""

import json

import numpy as np

from backend.lora.formats import CLONEOFSIMO_PREFIX, EMBEDDING_PREFIX, kohya_key_target, normalize_upload
from backend.lora.safetensors_file import LoraFormatError, Tensor, read_safetensors, write_safetensors

SD1, SD2, SDXL = "sd_v1", "sd_v2", "sdxl_base_v1-0"  # kohya's ss_base_model_version values
_CROSS_ATTENTION = {768: SD1, 1024: SD2, 2048: SDXL}  # what a UNet's cross-attention width says (as check.py)


class NotExportable(LoraFormatError):
    """The stored LoRA cannot be written in kohya's layout; the message says why and what to use instead."""


def to_kohya(data: bytes, *, sdxl: bool | None = None, trigger: str | None = None, title: str | None = None) -> bytes:
    """A stored LoRA (Showroom's canonical layout, or any layout normalize_upload takes) -> kohya-layout safetensors.
    `sdxl` is the base model as the caller knows it, used only where the file cannot tell (a tiny model's widths,
    a LoRA with no cross-attention key): it decides `lora_te` or `lora_te1`. `trigger` (the catalog product's) is the
    trigger phrase; `title` (the product's name) goes in where the file does not name its own. NotExportable says
    why not."""
    tensors, metadata = read_safetensors(data)
    if metadata.get("showroom_lora") != "1":  # stored by hand or before the converters: normalise it first
        tensors = read_safetensors(normalize_upload(data))[0]
    downs, ups, embeddings = _split(tensors)
    base = _base_model(downs, sdxl)
    prefixes = {"unet": "lora_unet", "text_encoder": "lora_te1" if base == SDXL else "lora_te",
                "text_encoder_2": "lora_te2"}
    out: dict[str, Tensor] = {}
    for target, down in downs.items():
        component, _, module = target.partition(".")
        name = f"{prefixes[component]}_{module.replace('.', '_')}"
        if kohya_key_target(f"{name}.alpha") != target:  # a module name whose underscores read back otherwise
            raise NotExportable(f"module {target} has no kohya name that reads back as itself ({name!r})")
        rank = down.shape[0]
        out[f"{name}.lora_down.weight"], out[f"{name}.lora_up.weight"] = down, ups[target]
        out[f"{name}.alpha"] = Tensor("F32", (), np.array(rank, dtype="<f4").tobytes())  # 0-d, as kohya's
    metadata = _metadata(metadata, downs, base, embeddings)
    if trigger:
        metadata["modelspec.trigger_phrase"] = trigger
    for key in ("modelspec.title", "ss_output_name"):
        if title and not metadata.get(key):
            metadata[key] = title
    return write_safetensors(out, metadata)


def _split(tensors: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor], list[str]]:
    """(down by target, up by target, token names) of a canonical file."""
    downs, ups, embeddings = {}, {}, []
    for key, tensor in tensors.items():
        if key.startswith(EMBEDDING_PREFIX):
            embeddings.append(key.removeprefix(EMBEDDING_PREFIX))
        elif key.startswith(CLONEOFSIMO_PREFIX):
            raise NotExportable("this LoRA was uploaded in cloneofsimo's layout, whose weights are numbered, not "
                                "named after the model's modules, so it cannot be written in kohya's layout; "
                                "AUTOMATIC1111 (with the lora_diffusion extension) can use the file you uploaded")
        elif key.endswith(".lora_A.weight"):
            downs[key.removesuffix(".lora_A.weight")] = tensor
        elif key.endswith(".lora_B.weight"):
            ups[key.removesuffix(".lora_B.weight")] = tensor
        else:
            raise NotExportable(f"the stored LoRA holds {key!r}, which is not in Showroom's layout: upload it again")
    if not downs or set(downs) != set(ups):
        raise NotExportable("the stored LoRA is incomplete (a module without its down or up matrix): upload it again")
    return downs, ups, sorted(embeddings)


def _base_model(downs: dict[str, Tensor], sdxl: bool | None) -> str | None:
    """kohya's name for the base model: from the file where it can tell, else from the caller's `sdxl`."""
    if any(target.startswith("text_encoder_2.") for target in downs):
        return SDXL
    widths = {down.shape[1] for target, down in downs.items()
              if target.startswith("unet.") and target.endswith(("attn2.to_k", "attn2.to_v"))}
    if len(widths) == 1 and (width := widths.pop()) in _CROSS_ATTENTION:
        return _CROSS_ATTENTION[width]
    return None if sdxl is None else (SDXL if sdxl else SD1)


def _metadata(stored: dict[str, str], downs: dict[str, Tensor], base: str | None, embeddings: list[str]) -> dict:
    metadata = {k: v for k, v in stored.items() if k != "showroom_lora" and not k.startswith(CLONEOFSIMO_PREFIX)}
    # What is written is a plain LoRA, whatever the upload was made with (a LyCORIS or DyLoRA network's module and
    # its arguments would tell a loader to build that network for these weights)
    metadata["ss_network_module"] = "networks.lora"
    metadata.pop("ss_network_args", None)
    ranks = {down.shape[0] for down in downs.values()}
    if len(ranks) == 1:  # kohya's one network dim, and the alpha this file has (a trained file's said its own)
        metadata["ss_network_dim"] = metadata["ss_network_alpha"] = str(ranks.pop())
    else:  # no one dim, and an upload's alpha, which the stored file folded in: each module's .alpha says its own
        metadata.pop("ss_network_alpha", None)
        metadata.pop("ss_network_dim", None)
    if base is not None:
        metadata.setdefault("ss_base_model_version", base)
        metadata.setdefault("ss_v2", str(base == SD2))
    if embeddings:
        metadata["showroom_left_out"] = (
            f"token embeddings {json.dumps(embeddings)}: kohya's LoRA layout has no place for them, so prompts "
            "elsewhere cannot use those tokens")
    return metadata
