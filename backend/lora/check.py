"""Judging an uploaded LoRA by its content: safetensors only, never a pickle, and made for our base model.

The base model is known from its config files alone (`model_index.json`, `unet/config.json`,
`text_encoder*/config.json`), read from MODEL_ID's folder or the Hugging Face cache: the API process
never loads the model and never imports torch.
"""

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from backend.lora.formats import CLONEOFSIMO_PREFIX, EMBEDDING_PREFIX, embedding_token_names, normalize_upload
from backend.lora.metadata import own_metadata, with_metadata
from backend.lora.safetensors_file import LoraFormatError, read_safetensors_header

log = logging.getLogger("showroom.lora")

# What a width says about the model a LoRA was made for (cross-attention; first text encoder).
CROSS_ATTENTION_BASES = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL"}
TEXT_ENCODER_BASES = {768: "SD 1.x or SDXL", 1024: "SD 2.x"}

_BLOCK = re.compile(r"^(?:(?P<kind>down_blocks|up_blocks)\.(?P<i>\d+)|mid_block)\.attentions\.\d+\.(?P<leaf>.+)$")
_TEXT_LAYER = re.compile(r"^text_model\.encoder\.layers\.(?P<i>\d+)\.(?P<leaf>.+)$")
# Leaves of a transformer block that read (in) or write (out) the block's channels.
_READS_CHANNELS = ("proj_in", "attn1.to_q", "attn1.to_k", "attn1.to_v", "attn2.to_q", "ff.net.0.proj")
_WRITES_CHANNELS = ("proj_out", "attn1.to_out.0", "attn2.to_out.0", "ff.net.2")
_READS_CONTEXT = ("attn2.to_k", "attn2.to_v")
_TEXT_READS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1")
_TEXT_WRITES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc2")


class WrongBaseModel(LoraFormatError):
    """The LoRA is well formed but was made for another base model."""


def normalize_lora(data: bytes, model_id: str | None, *, title: str | None = None) -> bytes:
    """The LoRA in the canonical layout the workers load, checked against MODEL_ID's widths where its config is
    at hand (None: not checked), with what the file says about itself (its own `ss_*` and `modelspec.*` keys, within
    metadata.own_metadata's budget; the loader's keys win) and, given a `title`, named so in the keys tools show;
    LoraFormatError (a ValueError) says what is wrong."""
    about = own_metadata(read_safetensors_header(data)[1])  # a cheap first look, with the message for pickles
    lora = normalize_upload(data)
    base = find_base_model(model_id) if model_id else None
    if base is not None:
        check_base_model(read_safetensors_header(lora)[0], base)
    if title:
        about |= {"modelspec.title": title, "ss_output_name": title}
    return with_metadata(lora, about)


# ----- the base model, from its config files -----

@dataclass(frozen=True)
class BaseModel:
    """The widths of the base model that a LoRA must match."""
    model_id: str
    cross_attention_dim: int
    block_out_channels: tuple[int, ...]
    text_encoders: dict[str, dict]  # component -> its config.json (hidden_size, ...), only those it has
    vocabulary: frozenset[str] = frozenset()  # the first tokenizer's own tokens (empty: not on this machine)

    def describe(self) -> str:
        return f"{self.model_id} ({self.cross_attention_dim}-wide cross-attention)"


_FOUND: dict[str, BaseModel] = {}  # only what was found: a model still downloading is looked up again


def _config(model_id: str, filename: str) -> dict | None:
    """A config file of MODEL_ID from its local folder or the Hugging Face cache, without the network."""
    folder = Path(model_id)
    if folder.is_dir():
        path = folder / filename
    else:
        from huggingface_hub import try_to_load_from_cache

        try:
            cached = try_to_load_from_cache(model_id, filename)
        except ValueError:  # not a repo id either (huggingface_hub's validation errors are ValueErrors)
            return None
        if not isinstance(cached, str):
            return None
        path = Path(cached)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def find_base_model(model_id: str) -> BaseModel | None:
    """MODEL_ID's widths, or None (logged) when its config files are not on this machine."""
    if model_id in _FOUND:
        return _FOUND[model_id]
    index, unet = _config(model_id, "model_index.json"), _config(model_id, "unet/config.json")
    if index is None or unet is None:
        log.warning("model_index.json and unet/config.json of MODEL_ID %r are not on this machine yet (in its folder "
                    "or the Hugging Face cache): this LoRA upload is not checked against the base model, a mismatch "
                    "shows when a worker loads it", model_id)
        return None
    try:
        text = {c: _config(model_id, f"{c}/config.json") or {} for c in ("text_encoder", "text_encoder_2")
                if (index.get(c) or [None])[0] is not None}
        base = BaseModel(model_id, int(unet["cross_attention_dim"]),
                         tuple(int(c) for c in unet["block_out_channels"]), text, _vocabulary(model_id))
    except (TypeError, KeyError, ValueError, AttributeError) as e:
        log.warning("the config of MODEL_ID %r does not give the widths a LoRA is checked against (%s: %s): "
                    "LoRA uploads are not checked, a mismatch shows when a worker loads it",
                    model_id, type(e).__name__, e)
        return None
    _FOUND[model_id] = base
    return base


def _vocabulary(model_id: str) -> frozenset[str]:
    """The tokens of MODEL_ID's first tokenizer (`vocab.json` and `added_tokens.json`), empty if not here."""
    tokens: set[str] = set()
    for filename in ("tokenizer/vocab.json", "tokenizer/added_tokens.json"):
        found = _config(model_id, filename)
        if isinstance(found, dict):
            tokens |= {str(t) for t in found}
    return frozenset(tokens)


# ----- a canonical LoRA against the base model -----

def check_base_model(header: dict, base: BaseModel) -> None:
    """Refuse a canonical LoRA (its safetensors header) whose modules or widths the base model does not have."""
    shapes = {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}
    pairs = {k.removesuffix(".lora_A.weight"): (down, shapes.get(k.replace(".lora_A.", ".lora_B."), ()))
             for k, down in shapes.items() if k.endswith(".lora_A.weight")}
    components = {"unet"} | set(base.text_encoders)
    for target in pairs:  # the clearest sign first: a text encoder this model does not have
        component = target.removeprefix(CLONEOFSIMO_PREFIX).split(".")[0]
        if component not in components:
            made_for = " (SDXL)" if component == "text_encoder_2" else ""
            raise WrongBaseModel(f"this LoRA has weights for a {component}, so it was made for a model with one"
                                 f"{made_for}; this backend runs {base.model_id}, which has none: use a LoRA "
                                 f"trained on this base model")
    for target, (down, _) in sorted(pairs.items()):
        if target.startswith("unet.") and target.endswith(_READS_CONTEXT) and down[1] != base.cross_attention_dim:
            made_for = CROSS_ATTENTION_BASES.get(down[1])
            raise WrongBaseModel(
                f"this LoRA was made for a model with {down[1]}-wide cross-attention"
                f"{f' ({made_for})' if made_for else ''}; this backend runs {base.model_id} with "
                f"{base.cross_attention_dim}-wide cross-attention (at {target}): use a LoRA trained on this base model")
    for target, (down, up) in sorted(pairs.items()):
        component, _, module = target.partition(".")
        if component == "unet":
            _check_unet(base, module, down, up)
        elif component in base.text_encoders:
            _check_text(base, component, module, down, up)
        else:
            _check_cloneofsimo(base, target, down)
    for key, shape in shapes.items():
        if key.startswith(EMBEDDING_PREFIX):
            _check_embedding(base, key.removeprefix(EMBEDDING_PREFIX), shape)


def _check_embedding(base: BaseModel, token: str, shape: tuple) -> None:
    width = base.text_encoders.get("text_encoder", {}).get("hidden_size")
    if width is not None and shape[-1] != width:
        raise WrongBaseModel(f"this LoRA's token embedding {token!r} is {shape[-1]} wide; this backend runs "
                             f"{base.model_id}, whose text encoder is {width} wide: use a LoRA trained on this "
                             "base model")
    vectors = shape[0] if len(shape) == 2 else 1
    if clash := [name for name in embedding_token_names(token, vectors) if name in base.vocabulary]:
        raise LoraFormatError(f"this LoRA's token embedding {token!r} would replace {base.model_id}'s own token "
                              f"{clash[0]!r} and change every prompt that uses it: rename the token (e.g. '<s1>')")


def _mismatch(base: BaseModel, target: str, side: str, found: int, expected: int) -> WrongBaseModel:
    return WrongBaseModel(f"this LoRA was made for another base model: its {target} {side} {found} values, that layer "
                          f"of {base.describe()} {side} {expected}; use a LoRA trained on this base model")


def _check_unet(base: BaseModel, module: str, down: tuple, up: tuple) -> None:
    m = _BLOCK.match(module)
    if not m:
        return  # resnets, samplers, embeddings: the worker checks them against the loaded model
    channels = base.block_out_channels
    if m["kind"] is not None and int(m["i"]) >= len(channels):
        raise WrongBaseModel(f"this LoRA has weights for unet.{module}, but {base.describe()} has "
                             f"{len(channels)} {m['kind']}: it was made for another base model")
    if m["kind"] is None:
        width = channels[-1]  # the mid block works at the deepest width
    else:
        width = (channels if m["kind"] == "down_blocks" else channels[::-1])[int(m["i"])]
    leaf = m["leaf"].split(".", 2)[-1] if m["leaf"].startswith("transformer_blocks.") else m["leaf"]
    if leaf in _READS_CHANNELS and down[1] != width:
        raise _mismatch(base, f"unet.{module}", "reads", down[1], width)
    if leaf in _WRITES_CHANNELS and up and up[0] != width:
        raise _mismatch(base, f"unet.{module}", "writes", up[0], width)


def _check_text(base: BaseModel, component: str, module: str, down: tuple, up: tuple) -> None:
    config = base.text_encoders[component]
    width, layers, m = config.get("hidden_size"), config.get("num_hidden_layers"), _TEXT_LAYER.match(module)
    if width is None or not m:
        return
    if layers is not None and int(m["i"]) >= layers:
        raise WrongBaseModel(f"this LoRA has weights for {component}.{module}, but the {component} of "
                             f"{base.model_id} has {layers} layers: it was made for another base model")
    reads = down[1] if m["leaf"] in _TEXT_READS else width
    writes = up[0] if up and m["leaf"] in _TEXT_WRITES else width
    found = reads if reads != width else writes
    if found != width:
        made_for = TEXT_ENCODER_BASES.get(found) if component == "text_encoder" else None
        raise WrongBaseModel(f"this LoRA was made for a {found}-wide {component}"
                             f"{f' ({made_for})' if made_for else ''}; this backend runs {base.model_id}, whose "
                             f"{component} is {width} wide (at {component}.{module}): use a LoRA trained on it")


def _check_cloneofsimo(base: BaseModel, target: str, down: tuple) -> None:
    """cloneofsimo keys name no module: their in-widths must at least be widths the model has."""
    component = target.removeprefix(CLONEOFSIMO_PREFIX).split(".")[0]
    if component == "unet":
        widths = {base.cross_attention_dim, *base.block_out_channels, *(4 * c for c in base.block_out_channels)}
    else:
        config = base.text_encoders.get(component, {})
        widths = {config.get("hidden_size"), config.get("intermediate_size")} - {None}
    if widths and down[1] not in widths:
        made_for = CROSS_ATTENTION_BASES.get(down[1]) if component == "unet" else None
        raise WrongBaseModel(f"this cloneofsimo LoRA has a {component} layer that reads {down[1]} values"
                             f"{f' (as {made_for} does)' if made_for else ''}; no {component} layer of "
                             f"{base.describe()} does (widths {sorted(widths)}): use a LoRA trained on this base model")
