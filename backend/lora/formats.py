"""LoRA files in the layouts users have, turned into the one layout the workers load.

`normalize_upload` runs in the API process (numpy only, never torch, never a pickle); `load_lora_into`
runs in a worker and is the only place where a LoRA meets a pipeline.

Accepted uploads (safetensors only):
  diffusers    `unet.<module>.lora_A.weight` / `lora_B.weight` (also the older `.lora.down.weight`,
               `.lora_linear_layer.down.weight` and `.processor.to_q_lora.down.weight` spellings),
               `text_encoder.` / `text_encoder_2.` for the text encoders; alphas from `<module>.alpha`
               tensors or diffusers' `lora_adapter_metadata`, else alpha = rank
  peft         `base_model.model.<module>.lora_A[.<adapter>].weight`, or the bare `<module>.lora_A.weight`
               of `get_peft_model_state_dict`; alpha = rank (peft keeps alpha in adapter_config.json)
  kohya        `lora_unet_<module_with_underscores>.lora_down.weight` / `.lora_up.weight` / `.alpha`,
               `lora_te_` (`lora_te1_`, `lora_te2_` on SDXL); SDXL's `input_blocks`/`output_blocks` names too
  cloneofsimo  `unet:<i>:up` / `unet:<i>:down` (and `text_encoder:<i>:...`), i = injection order, plus
               token embeddings such as `<s1>` (metadata `<embed>`), as written by lora_diffusion

Canonical layout (what `normalize_upload` returns, safetensors):
  `<component>.<module>.lora_A.weight`    down, (rank, in) or (rank, in, kh, kw)
  `<component>.<module>.lora_B.weight`    up with alpha/rank folded in, so every scale is 1
        text-encoder modules are named as transformers 4 named them (`text_model.encoder.layers.<i>...`), as the
        LoRAs in the wild do; a worker on transformers 5 (no `text_model` level) drops the prefix when it loads
  `cloneofsimo.<component>.<i>.lora_A.weight` / `lora_B.weight`
        cloneofsimo keys name no module: the index is resolved against the model in the worker
  `embedding:<token>`                     a token embedding for the first text encoder, (dim,) or (n, dim); never
        a token of the base vocabulary. In a job, a token several of its LoRAs define takes the product's vector
  metadata `showroom_lora` = "1", `source_format` = the detected layout, `cloneofsimo.<component>` = the
  cloneofsimo target classes (JSON). Without cloneofsimo and embedding keys this is exactly what
  `pipe.load_lora_weights(state_dict, adapter_name=...)` takes; `load_lora_into` handles the rest.
"""

import json
import logging
import re
from dataclasses import dataclass

import numpy as np

from backend.lora.safetensors_file import LoraFormatError, Tensor, read_safetensors, write_safetensors

log = logging.getLogger("showroom.lora")

EMBEDDING_PREFIX = "embedding:"
CLONEOFSIMO_PREFIX = "cloneofsimo."
COMPONENTS = ("unet", "text_encoder", "text_encoder_2")


class LoraNotApplied(Exception):
    """A worker could not load a stored LoRA into its pipeline: the job's images fail with this message.
    `product` names the LoRA's product; `cause` is what went wrong (a LoraFormatError when the file is at fault)."""

    def __init__(self, product: str, cause: BaseException):
        reason = str(cause) if isinstance(cause, LoraFormatError) else f"{type(cause).__name__}: {cause}"
        super().__init__(f"product {product}'s LoRA could not be applied: {reason}")
        self.product, self.cause = product, cause


# ----- layouts -----

@dataclass
class Pair:
    """The weights of one LoRA'd module, keyed by `<component>.<module>` (or a cloneofsimo index)."""
    down: Tensor | None = None
    up: Tensor | None = None
    alpha: float | None = None


_DIFFUSERS_AB = re.compile(r"^(?P<mod>.+?)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")
_DIFFUSERS_OLD = re.compile(r"^(?P<mod>.+?)\.lora(?:_linear_layer)?\.(?P<ab>down|up)\.weight$")
_DIFFUSERS_PROC = re.compile(
    r"^(?P<mod>.+?)(?:\.processor)?\.(?P<proj>to_q|to_k|to_v|to_out)_lora\.(?P<ab>down|up)\.weight$")
_KOHYA = re.compile(r"^lora_(?P<part>unet|te1|te2|te)_(?P<name>.+?)\.(?:(?P<ab>lora_down|lora_up)\.weight|alpha)$")
_CLONEOFSIMO = re.compile(r"^(?P<part>unet|text_encoder):(?P<i>\d+):(?P<ab>up|down)$")
_TEXT_PROJ = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"}
_KOHYA_PARTS = {"unet": "unet", "te": "text_encoder", "te1": "text_encoder", "te2": "text_encoder_2"}
# Module-name words that hold an underscore, for reading kohya's flattened names back (longest first).
_COMPOUNDS = sorted((tuple(w.split("_")) for w in (
    "down_blocks up_blocks mid_block transformer_blocks to_q to_k to_v to_out proj_in proj_out conv_shortcut "
    "time_emb_proj time_embedding linear_1 linear_2 conv_in conv_out conv_norm_out add_embedding class_embedding "
    "encoder_hid_proj text_model self_attn q_proj k_proj v_proj out_proj layer_norm1 layer_norm2 final_layer_norm "
    "token_embedding position_embedding text_projection input_blocks middle_block output_blocks in_layers "
    "out_layers emb_layers skip_connection time_embed label_emb").split()), key=len, reverse=True)


def _unflatten(name: str) -> str:
    """`down_blocks_1_attentions_0_proj_in` -> `down_blocks.1.attentions.0.proj_in`."""
    words, out, i = name.split("_"), [], 0
    while i < len(words):
        for compound in _COMPOUNDS:
            if tuple(words[i:i + len(compound)]) == compound:
                out.append("_".join(compound))
                i += len(compound)
                break
        else:
            out.append(words[i])
            i += 1
    return ".".join(out)


_SGM_RESNET = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
               "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}


def _sgm_to_diffusers(path: str, layers_per_block: int = 2) -> str:
    """SDXL's original (sgm) UNet names, as kohya writes them, to diffusers names (2 layers a block, as SD/SDXL)."""
    parts = path.split(".")
    if parts[0] not in ("input_blocks", "middle_block", "output_blocks"):
        return path
    if parts[0] == "middle_block":
        j, rest = int(parts[1]), ".".join(parts[2:])
        head = {0: "mid_block.resnets.0", 1: "mid_block.attentions.0", 2: "mid_block.resnets.1"}[j]
        inner = j != 1
    else:
        i, j, rest = int(parts[1]), int(parts[2]), ".".join(parts[3:])
        if parts[0] == "input_blocks":
            if i == 0:
                raise LoraFormatError(f"kohya module input_blocks.0.{j} (conv_in) is not supported")
            block, layer = divmod(i - 1, layers_per_block + 1)
            if layer == layers_per_block:
                return f"down_blocks.{block}.downsamplers.0.{rest.replace('op', 'conv')}"
            if j > 1:
                raise LoraFormatError(f"kohya module input_blocks.{i}.{j} is not a UNet module we know")
            kind = ("resnets", "attentions")[j]
            head, inner = f"down_blocks.{block}.{kind}.{layer}", j == 0
        else:
            block, layer = divmod(i, layers_per_block + 1)
            if j > 0 and rest.startswith("conv"):
                return f"up_blocks.{block}.upsamplers.0.{rest}"
            if j > 1:
                raise LoraFormatError(f"kohya module output_blocks.{i}.{j} is not a UNet module we know")
            head, inner = f"up_blocks.{block}.{('resnets', 'attentions')[j]}.{layer}", j == 0
    if inner:
        for old, new in _SGM_RESNET.items():
            if rest == old or rest.startswith(old + "."):
                rest = new + rest[len(old):]
    return f"{head}.{rest}"


def _kohya_target(part: str, name: str) -> str:
    path = _unflatten(name)
    if part == "unet":
        try:
            path = _sgm_to_diffusers(path)
        except LoraFormatError:
            raise
        except (IndexError, KeyError, ValueError):  # a block number missing, not a number, or past the UNet's
            raise LoraFormatError(f"kohya module {path} is not a UNet module we know") from None
    return f"{_KOHYA_PARTS[part]}.{path}"


def kohya_key_target(key: str) -> str | None:
    """The canonical `<component>.<module>` a kohya key is read as (None: not a kohya key, or no module we know):
    the reader's own rule, for kohya_export to check that what it writes reads back as itself."""
    if not (m := _KOHYA.match(key)):
        return None
    try:
        return _canonical_target(_kohya_target(m["part"], m["name"]))
    except LoraFormatError:
        return None


def _diffusers_target(key: str) -> tuple[str, str] | None:
    """(target, 'down'|'up') for a diffusers/peft weight key, or None."""
    if m := _DIFFUSERS_PROC.match(key):
        mod, proj = m["mod"], m["proj"]
        text = mod.startswith("text_encoder")
        mod = f"{mod}.{_TEXT_PROJ[proj]}" if text else f"{mod}.{'to_out.0' if proj == 'to_out' else proj}"
        return mod, m["ab"]
    if m := (_DIFFUSERS_AB.match(key) or _DIFFUSERS_OLD.match(key)):
        return m["mod"], {"A": "down", "B": "up"}.get(m["ab"], m["ab"])
    return None


def _with_component(mod: str) -> str:
    mod = mod.removeprefix("base_model.model.")
    if mod.split(".")[0] in COMPONENTS:
        return mod
    return f"text_encoder.{mod}" if mod.startswith(("text_model.", "encoder.layers.")) else f"unet.{mod}"


def _canonical_target(target: str) -> str:
    """Text-encoder modules as transformers 4 named them (`text_model.encoder.layers...`), as LoRAs in the wild do.
    transformers 5 dropped the `text_model` level: files made with it gain it here, and a worker whose text
    encoder has none drops it again (`_model_key`)."""
    component, _, module = target.partition(".")
    if component.startswith("text_encoder") and not module.startswith("text_model."):
        return f"{component}.text_model.{module}"
    return target


def _metadata_alpha(metadata: dict[str, str]) -> dict[str, float]:
    """Per-component lora_alpha and alpha_pattern from diffusers' `lora_adapter_metadata`."""
    raw = metadata.get("lora_adapter_metadata")
    if not raw:
        return {}
    try:
        packed = json.loads(raw)
    except (ValueError, RecursionError):
        raise LoraFormatError("the file's lora_adapter_metadata is not JSON") from None
    if not isinstance(packed, dict):
        raise LoraFormatError("the file's lora_adapter_metadata is not a JSON object")
    alphas = {}
    for component in COMPONENTS:
        if f"{component}.lora_alpha" in packed:
            alphas[component] = _number(packed[f"{component}.lora_alpha"], f"{component}.lora_alpha")
            patterns = packed.get(f"{component}.alpha_pattern") or {}
            if not isinstance(patterns, dict):
                raise LoraFormatError(f"the file's lora_adapter_metadata has a {component}.alpha_pattern that is not "
                                      "a JSON object")
            for pattern, alpha in patterns.items():
                alphas[f"{component}.{pattern}"] = _number(alpha, f"{component}.alpha_pattern {pattern!r}")
    return alphas


def _number(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise LoraFormatError(f"the file's lora_adapter_metadata gives {what} as {value!r}, not a number")
    return float(value)


def _alpha_for(target: str, alphas: dict[str, float]) -> float | None:
    """peft's rule: an alpha_pattern entry matching the module's name (or its tail), else the component's alpha."""
    component, _, module = target.partition(".")
    for key, alpha in alphas.items():
        pattern = key.removeprefix(component + ".")
        if key != pattern and (module == pattern or module.endswith("." + pattern)):
            return alpha
    return alphas.get(component)


def _parse(tensors: dict[str, Tensor], metadata: dict[str, str]) -> tuple[str, dict[str, Pair], dict[str, Tensor]]:
    """(source layout, pairs by target, token embeddings)."""
    pairs: dict[str, Pair] = {}
    embeddings: dict[str, Tensor] = {}
    unknown: list[str] = []
    layouts: set[str] = set()
    keys: dict[tuple[str, str], str] = {}  # (target, part) -> the key that gave it

    def put(target: str, part: str, value, key: str) -> None:
        """One module's down, up or alpha; a second one for the same module (two adapters in one file, two
        spellings of one module) is refused rather than one of them kept silently."""
        if (target, part) in keys:
            what = {"down": "down (lora_A) matrices", "up": "up (lora_B) matrices", "alpha": "alphas"}[part]
            raise LoraFormatError(f"the file holds two {what} for {target} ({keys[target, part]!r} and {key!r}): "
                                  "it must hold one LoRA; export the one you want on its own")
        keys[target, part] = key
        setattr(pairs.setdefault(target, Pair()), part, value)

    for key, tensor in tensors.items():
        if m := _CLONEOFSIMO.match(key):
            layouts.add("cloneofsimo")
            put(f"{CLONEOFSIMO_PREFIX}{m['part']}.{m['i']}", m["ab"], tensor, key)
        elif metadata.get(key) == "<embed>" or key.startswith(EMBEDDING_PREFIX):
            embeddings[key.removeprefix(EMBEDDING_PREFIX)] = tensor
        elif m := _KOHYA.match(key):
            layouts.add("kohya")
            target = _kohya_target(m["part"], m["name"])
            if m["ab"]:
                put(target, "down" if m["ab"] == "lora_down" else "up", tensor, key)
            else:
                put(target, "alpha", _alpha_value(key, tensor), key)
        elif found := _diffusers_target(key):
            layouts.add("peft" if key.split(".")[0] not in COMPONENTS else "diffusers")
            put(_with_component(found[0]), found[1], tensor, key)
        elif key.endswith(".alpha") and key.split(".")[0] in COMPONENTS:
            put(key.removesuffix(".alpha"), "alpha", _alpha_value(key, tensor), key)
        else:
            unknown.append(key)
    if unknown:
        raise LoraFormatError(_unknown_message(unknown, bool(pairs)))
    if not pairs:
        raise LoraFormatError("the file holds no LoRA weights" + (" (only token embeddings)" if embeddings else ""))
    if len(layouts) > 1:
        raise LoraFormatError(f"the file mixes LoRA layouts ({', '.join(sorted(layouts))}); export it in one")
    return layouts.pop(), pairs, embeddings


def _alpha_value(key: str, tensor: Tensor) -> float:
    values = tensor.array().reshape(-1)
    if values.size == 0:
        raise LoraFormatError(f"alpha {key!r} holds no value: the file is damaged; export the LoRA again")
    return float(values[0])


# Key fragments of the adapters that are not plain LoRA: LyCORIS' other algorithms (lycoris/modules), DoRA.
_NOT_PLAIN_LORA = (("hada_", "LyCORIS LoHa"), ("lokr_", "LyCORIS LoKr"), ("oft_blocks", "LyCORIS OFT"),
                   (".on_input", "LyCORIS IA3"), (".diff", "LyCORIS full"), ("dora_scale", "DoRA"),
                   ("lora_magnitude_vector", "DoRA"))


def _unknown_message(unknown: list[str], has_lora: bool) -> str:
    sample = ", ".join(repr(k) for k in unknown[:3])
    if any(k.startswith(("model.diffusion_model.", "first_stage_model.", "cond_stage_model.")) for k in unknown):
        return "this is a full Stable Diffusion checkpoint, not a LoRA: upload the LoRA file"
    kinds: dict[str, str] = {}  # kind -> the first key that shows it
    for key in unknown:
        if kind := next((kind for marker, kind in _NOT_PLAIN_LORA if marker in key), None):
            kinds.setdefault(kind, key)
    if kinds:
        found = ", ".join(repr(k) for k in list(kinds.values())[:3])
        return (f"{' and '.join(sorted(kinds))} weights are not supported, only plain LoRA (lora_down/lora_up or "
                f"lora_A/lora_B pairs); found {found}: export or retrain it as a plain LoRA")
    if not has_lora:
        return (f"the file holds no LoRA weights in a known layout (diffusers, peft, kohya or cloneofsimo); "
                f"first tensors: {sample}")
    return f"the file holds {len(unknown)} tensors that are not part of a LoRA, e.g. {sample}"


def _check_pair(target: str, pair: Pair) -> float:
    """Validate one module's weights; returns its scale alpha / rank."""
    name = target.removeprefix(CLONEOFSIMO_PREFIX)
    if pair.down is None or pair.up is None:
        missing = "up (lora_B)" if pair.up is None else "down (lora_A)"
        raise LoraFormatError(f"the LoRA for {name} has no {missing} matrix: the file is incomplete")
    down, up = pair.down.shape, pair.up.shape
    if len(down) not in (2, 4) or len(up) != len(down) or down[0] != up[1] or (len(up) == 4 and up[2:] != (1, 1)):
        raise LoraFormatError(f"the LoRA for {name} has inconsistent shapes: down {list(down)}, up {list(up)}")
    if down[0] == 0:
        raise LoraFormatError(f"the LoRA for {name} has rank 0: it changes nothing; the file is damaged")
    return 1.0 if pair.alpha is None else pair.alpha / down[0]


def normalize_upload(data: bytes) -> bytes:
    """An uploaded LoRA in any supported layout -> the canonical safetensors layout; LoraFormatError says why not."""
    tensors, metadata = read_safetensors(data)
    source, pairs, embeddings = _parse(tensors, metadata)
    alphas = _metadata_alpha(metadata)
    out: dict[str, Tensor] = {}
    for target, pair in pairs.items():
        if pair.alpha is None and alphas:
            pair.alpha = _alpha_for(target, alphas)
        scale = _check_pair(target, pair)
        up = pair.up
        if scale != 1.0:
            up = Tensor.from_array(up.array() * np.float32(scale), up.dtype)
        for tensor in (pair.down, up):
            if not np.isfinite(tensor.array()).all():
                raise LoraFormatError(f"the LoRA for {target} holds NaN or infinite values: the training diverged")
        target = _canonical_target(target)
        out[f"{target}.lora_A.weight"], out[f"{target}.lora_B.weight"] = pair.down, up
    for token, tensor in embeddings.items():
        if len(tensor.shape) not in (1, 2) or 0 in tensor.shape or not token.strip():
            raise LoraFormatError(f"token embedding {token!r} has shape {list(tensor.shape)}; "
                                  "expected (dim,) or (n, dim)")
        if not np.isfinite(tensor.array()).all():
            raise LoraFormatError(f"token embedding {token!r} holds NaN or infinite values: the training diverged")
        out[EMBEDDING_PREFIX + token] = tensor
    if metadata.get("showroom_lora") == "1":  # already canonical: keep what was detected the first time
        source = metadata.get("source_format", source)
    new_metadata = {"format": "pt", "showroom_lora": "1", "source_format": source}
    for part in ("unet", "text_encoder"):
        targets = metadata.get(f"cloneofsimo.{part}") or (metadata.get(part) if source == "cloneofsimo" else None)
        if targets:
            new_metadata[f"cloneofsimo.{part}"] = _target_classes(targets, part)
    log.info("LoRA upload: %s layout, %d modules, %d token embeddings", source, len(pairs), len(embeddings))
    return write_safetensors(out, new_metadata)


def _target_classes(raw: str, part: str) -> str:
    """A cloneofsimo file's target classes for `part`, checked now: the worker resolves the file's indices with them."""
    try:
        classes = json.loads(raw)
    except (ValueError, RecursionError):
        classes = None
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)):
        raise LoraFormatError(f"the file's cloneofsimo target classes for its {part} ({raw[:100]!r}) are not a JSON "
                              "list of class names, as lora_diffusion writes them (e.g. '[\"CrossAttention\", "
                              "\"GEGLU\"]'): export the LoRA again")
    return raw


def embedding_token_names(token: str, vectors: int) -> list[str]:
    """The tokenizer entries an embedding of `vectors` rows takes: `<s1>`, then `<s1>_1`, ... (the convention of
    diffusers' textual inversion, whose prompts expand `<s1>` into all of them)."""
    return [token] + [f"{token}_{i}" for i in range(1, vectors)]
