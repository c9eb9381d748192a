"""In the worker: a canonical LoRA file meets a pipeline. It is checked whole (shapes, NaN, tokens) before
the pipeline changes, loaded as a named adapter, and its token embeddings are pointed at per job (every
cloneofsimo LoRA names its token <s1>). torch is imported lazily, as the API process imports formats only.
"""

import json
import logging
import struct
import weakref
from pathlib import Path

from backend.lora.formats import CLONEOFSIMO_PREFIX, EMBEDDING_PREFIX, embedding_token_names, normalize_upload
from backend.lora.safetensors_file import LoraFormatError

log = logging.getLogger("showroom.lora")

# ----- in the worker: the canonical file meets a pipeline (torch from here on, imported lazily) -----

# The Linear layers lora_diffusion wraps under each target class, in the order it finds them: registration
# order of the diffusers/transformers of its time (CLIPAttention registers k, v, q, out).
_CLONEOFSIMO_LINEARS = {"Attention": ("to_q", "to_k", "to_v", "to_out.0"), "GEGLU": ("proj",),
                        "CLIPAttention": ("k_proj", "v_proj", "q_proj", "out_proj")}
_CLONEOFSIMO_DEFAULT = {"unet": ["CrossAttention", "Attention", "GEGLU"], "text_encoder": ["CLIPAttention"]}
# text encoder -> {adapter name: {token: embedding}}, for use_token_embeddings
_TOKEN_REGISTRY: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _cloneofsimo_orders(model, targets: list[str]) -> list[list[str]]:
    """Candidate module orders for lora_diffusion's indices: on today's module tree, and on the diffusers it was
    used with, whose BasicTransformerBlock registered `ff` between `attn1` and `attn2`."""
    wanted = {"Attention" if t == "CrossAttention" else t for t in targets}
    order = []
    for name, module in model.named_modules():
        cls = type(module).__name__
        if cls in wanted and cls in _CLONEOFSIMO_LINEARS:
            order += [f"{name}.{leaf}" for leaf in _CLONEOFSIMO_LINEARS[cls]]
    legacy = [m for m in order if not m.endswith(".ff.net.0.proj")]
    for ff in (m for m in order if m.endswith(".ff.net.0.proj")):
        block = ff.removesuffix(".ff.net.0.proj")
        if f"{block}.attn1.to_out.0" in legacy:
            legacy.insert(legacy.index(f"{block}.attn1.to_out.0") + 1, ff)
    return [legacy, order] if legacy != order else [order]


def _module_shape_error(pipe, target: str, down, up) -> str | None:
    """Why `target` cannot take these weights in this pipeline, or None when it can."""
    import torch

    component, _, path = target.partition(".")
    model = getattr(pipe, component, None)
    if model is None:
        return f"the model has no {component}"
    try:
        module = model.get_submodule(path)
    except AttributeError:
        return f"module {path!r} not found in the model's {component}"
    base = getattr(module, "base_layer", module)
    r = down.shape[0]
    if isinstance(base, torch.nn.Linear):
        expected_down, expected_up = (r, base.in_features), (base.out_features, r)
    elif isinstance(base, torch.nn.Conv2d):
        expected_down, expected_up = (r, base.in_channels, *base.kernel_size), (base.out_channels, r, 1, 1)
    else:
        return f"module {target} is a {type(base).__name__}, not a Linear or Conv2d layer"
    if tuple(down.shape) != expected_down or tuple(up.shape) != expected_up:
        return (f"shape mismatch at {target}: LoRA down {list(down.shape)} / up {list(up.shape)} vs model "
                f"down {list(expected_down)} / up {list(expected_up)} (rank {r})")
    return None


def _guess_base(targets: dict[str, tuple]) -> str:
    """What the LoRA was probably trained for, from its keys and the cross-attention width it expects."""
    if any(t.startswith("text_encoder_2.") for t in targets):
        return "SDXL (it has text encoder 2 weights)"
    widths = {shape[1] for t, shape in targets.items() if t.endswith(("attn2.to_k", "attn2.to_v"))}
    names = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL"}
    if len(widths) == 1 and (width := widths.pop()) in names:
        return f"{names[width]} (cross-attention width {width})"
    return "another base model"


def _mismatch(pipe, reason: str, downs: dict[str, tuple]) -> "LoraFormatError":
    unet = getattr(pipe, "unet", None)
    width = getattr(getattr(unet, "config", None), "cross_attention_dim", "?")
    model = f"{type(pipe).__name__}, cross-attention width {width}"
    return LoraFormatError(f"this LoRA does not match the base model: {reason}. It was trained for "
                           f"{_guess_base(downs)} but the model is a {model}; use a LoRA trained on this model")


def _resolve_cloneofsimo(pipe, state: dict, metadata: dict[str, str]) -> dict:
    """Replace `cloneofsimo.<component>.<i>` targets by module names, trying each plausible injection order."""
    out = {k: v for k, v in state.items() if not k.startswith(CLONEOFSIMO_PREFIX)}
    for component in ("unet", "text_encoder"):
        prefix = f"{CLONEOFSIMO_PREFIX}{component}."
        count = len([k for k in state if k.startswith(prefix) and k.endswith(".lora_A.weight")])
        if not count:
            continue
        model = getattr(pipe, component, None)
        stored = metadata.get(f"cloneofsimo.{component}")
        target_sets = [json.loads(stored)] if stored else [_CLONEOFSIMO_DEFAULT[component], ["CrossAttention"]]
        candidates = [o for t in target_sets for o in (_cloneofsimo_orders(model, t) if model is not None else [])]
        for order in candidates:
            if len(order) == count and not any(
                    _module_shape_error(pipe, f"{component}.{m}", state[f"{prefix}{i}.lora_A.weight"],
                                        state[f"{prefix}{i}.lora_B.weight"]) for i, m in enumerate(order)):
                for i, m in enumerate(order):
                    for ab in ("lora_A", "lora_B"):
                        out[f"{component}.{m}.{ab}.weight"] = state[f"{prefix}{i}.{ab}.weight"]
                break
        else:
            sizes = sorted({len(o) for o in candidates})
            raise _mismatch(pipe, f"the cloneofsimo LoRA has {count} {component} layers, the model has {sizes} "
                                  f"in lora_diffusion's order, or their shapes differ", {})
    return out


def _model_key(pipe, key: str) -> str:
    """A canonical key as this pipeline names the module: without `text_model.` where the text encoder has no such
    level (transformers 5)."""
    component, _, rest = key.partition(".")
    if rest.startswith("text_model.") and not hasattr(getattr(pipe, component, None), "text_model"):
        return f"{component}.{rest.removeprefix('text_model.')}"
    return key


def _header_metadata(data: bytes) -> dict[str, str]:
    try:
        (size,) = struct.unpack("<Q", data[:8])
        return json.loads(data[8:8 + size]).get("__metadata__") or {}
    except (struct.error, ValueError, AttributeError):
        return {}


def load_lora_into(pipe, path: Path, adapter_name: str) -> list[str]:
    """Load a canonical LoRA file into `pipe` as `adapter_name`; returns the tokens it gives vectors to. Everything
    is checked before the pipeline changes: a LoraFormatError leaves no adapter and no token behind."""
    import torch
    from safetensors.torch import load

    data = Path(path).read_bytes()
    metadata = _header_metadata(data)
    if metadata.get("showroom_lora") != "1":  # stored before the converters existed, or put there by hand
        data = normalize_upload(data)
        metadata = _header_metadata(data)
    try:
        state = load(data)
    except Exception as e:  # safetensors has its own error types for damaged files
        raise LoraFormatError(f"the LoRA file {Path(path).name} cannot be read ({e}); upload it again") from None
    embeddings = {k.removeprefix(EMBEDDING_PREFIX): v for k, v in state.items() if k.startswith(EMBEDDING_PREFIX)}
    state = _resolve_cloneofsimo(pipe, {_model_key(pipe, k): v for k, v in state.items()
                                        if not k.startswith(EMBEDDING_PREFIX)}, metadata)
    targets = {k.removesuffix(".lora_A.weight") for k in state if k.endswith(".lora_A.weight")}
    downs = {t: tuple(state[f"{t}.lora_A.weight"].shape) for t in targets}
    for target in sorted(targets):
        down, up = state[f"{target}.lora_A.weight"], state[f"{target}.lora_B.weight"]
        if reason := _module_shape_error(pipe, target, down, up):
            raise _mismatch(pipe, reason, downs)
        if not (torch.isfinite(down).all() and torch.isfinite(up).all()):  # a file stored before uploads were checked
            raise LoraFormatError(f"the LoRA for {target} holds NaN or infinite values: the training diverged")
    rows = _check_tokens(pipe, embeddings) if embeddings else {}
    for key, value in state.items():  # the LoRA layers take the dtype of the layer they wrap
        component = getattr(pipe, key.split(".")[0])
        state[key] = value.to(dtype=component.dtype)
    try:
        pipe.load_lora_weights(state, adapter_name=adapter_name)
        if rows:
            _add_tokens(pipe, adapter_name, rows)
    except Exception:
        if adapter_name in {a for names in pipe.get_list_adapters().values() for a in names}:
            pipe.delete_adapters(adapter_name)
        forget_token_embeddings(pipe, adapter_name)
        raise
    return list(rows)


# ----- token embeddings: every cloneofsimo LoRA says <s1>, so each job points the shared rows at its own -----

def _base_vocabulary(tokenizer) -> set[str]:
    """The tokenizer's own tokens: everything but the tokens added for embeddings (special tokens are its own)."""
    added = set(tokenizer.added_tokens_encoder) - set(tokenizer.all_special_tokens)
    return set(tokenizer.get_vocab()) - added


def _check_tokens(pipe, embeddings: dict) -> dict:
    """{token: its rows, (n, width)} once every embedding fits this pipeline's first text encoder and tokenizer."""
    import torch

    tokenizer, text_encoder = getattr(pipe, "tokenizer", None), getattr(pipe, "text_encoder", None)
    if tokenizer is None or text_encoder is None:
        raise LoraFormatError("this LoRA carries token embeddings but the model has no text encoder")
    width = text_encoder.get_input_embeddings().weight.shape[1]
    vocab, base = tokenizer.get_vocab(), _base_vocabulary(tokenizer)
    rows = {}
    for token, vector in embeddings.items():
        if vector.shape[-1] != width:
            raise _mismatch(pipe, f"token embedding {token!r} has {vector.shape[-1]} values but the model's text "
                                  f"encoder uses {width}", {})
        if not torch.isfinite(vector).all():
            raise LoraFormatError(f"token embedding {token!r} holds NaN or infinite values: the training diverged")
        rows[token] = vector.reshape(-1, width)
        names = embedding_token_names(token, len(rows[token]))
        if clash := [n for n in names if n in base]:
            raise LoraFormatError(f"token embedding {token!r} would replace the base model's own token {clash[0]!r} "
                                  "and change every prompt that uses it: rename the token (e.g. '<s1>')")
        if f"{token}_{len(names)}" in vocab or (token in vocab and any(n not in vocab for n in names[1:])):
            raise LoraFormatError(f"token {token!r} has {len(names)} vector(s) in this LoRA but a different number "
                                  "in another LoRA loaded on this worker: rename the token in one of them")
    return rows


def _add_tokens(pipe, adapter_name: str, rows: dict) -> None:
    """Give the tokenizer any of these tokens it lacks (and the text encoder a row for each), and remember the
    vectors as this adapter's; `use_token_embeddings` writes them before each job."""
    tokenizer, text_encoder = pipe.tokenizer, pipe.text_encoder
    vocab = tokenizer.get_vocab()
    missing = [n for token, r in rows.items() for n in embedding_token_names(token, len(r)) if n not in vocab]
    if missing:
        tokenizer.add_tokens(missing)
        if len(tokenizer) > text_encoder.get_input_embeddings().weight.shape[0]:
            text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # every new row is written below
    _TOKEN_REGISTRY.setdefault(text_encoder, {})[adapter_name] = rows
    _write_rows(tokenizer, text_encoder, rows)
    log.info("adapter %s: token embeddings %s", adapter_name, ", ".join(rows))


def _write_rows(tokenizer, text_encoder, rows: dict) -> None:
    import torch

    table = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        for token, vectors in rows.items():
            for name, row in zip(embedding_token_names(token, len(vectors)), vectors):
                table[tokenizer.convert_tokens_to_ids(name)] = row.to(device=table.device, dtype=table.dtype)


def use_token_embeddings(pipe, adapter_names: list[str]) -> None:
    """Before a job: point each token of these adapters at its vectors. A token that several of them share (every
    cloneofsimo LoRA says `<s1>`) takes the vectors of the first one named, the job's product."""
    text_encoder = getattr(pipe, "text_encoder", None)
    by_adapter = _TOKEN_REGISTRY.get(text_encoder, {}) if text_encoder is not None else {}
    chosen: dict[str, tuple[str, object]] = {}
    for name in adapter_names:
        for token, rows in by_adapter.get(name, {}).items():
            if token not in chosen:
                chosen[token] = name, rows
            elif not rows.equal(chosen[token][1]):
                log.warning("adapters %s and %s both define token %s: this job uses %s's", chosen[token][0], name,
                            token, chosen[token][0])
    if chosen:
        _write_rows(pipe.tokenizer, text_encoder, {token: rows for token, (_, rows) in chosen.items()})


def forget_token_embeddings(pipe, adapter_name: str) -> None:
    """The adapter is gone: its vectors are no longer written (its tokens stay in the tokenizer, unused)."""
    text_encoder = getattr(pipe, "text_encoder", None)
    if text_encoder is not None:
        _TOKEN_REGISTRY.get(text_encoder, {}).pop(adapter_name, None)
