"""LoRA uploads refused with a reason, not a crash: pickles, files that are not safetensors, headers written by hand
to break a reader (shared or overlapping bytes, bad offsets, bad dtypes), half pairs, LyCORIS algorithms, NaN and
infinite weights. Those that need the model itself are in test_lora_formats.py."""

import io
import json
import os
import struct

import pytest
import torch
from safetensors.torch import save

from backend.lora.formats import normalize_upload
from backend.lora.safetensors_file import LoraFormatError

RANK = 2


def test_refuses_a_pickle():
    buffer = io.BytesIO()
    torch.save({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, buffer)
    with pytest.raises(LoraFormatError, match="not a .safetensors file.*pickle"):
        normalize_upload(buffer.getvalue())


@pytest.mark.parametrize("data", [b"", b"\x00" * 4, os.urandom(4096), b"PK\x03\x04" + os.urandom(200)],
                         ids=["empty", "short", "random", "zip"])
def test_refuses_what_is_not_safetensors(data):
    with pytest.raises(LoraFormatError, match="not a .safetensors file"):
        normalize_upload(data)


def test_refuses_safetensors_without_lora():
    with pytest.raises(LoraFormatError, match="no LoRA weights"):
        normalize_upload(save({"vocab.embedding": torch.zeros(4, 4)}))
    with pytest.raises(LoraFormatError, match="full Stable Diffusion checkpoint"):
        normalize_upload(save({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4)}))


def test_refuses_half_a_pair():
    with pytest.raises(LoraFormatError, match="no up"):
        normalize_upload(save({"unet.down_blocks.1.attentions.0.proj_in.lora_A.weight": torch.zeros(2, 16)}))


def handmade(entries: dict, body: bytes, metadata: dict | None = None) -> bytes:
    """A safetensors file written by hand, header entries as given: what safetensors' own writer never makes."""
    header = entries | ({"__metadata__": metadata} if metadata is not None else {})
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    return struct.pack("<Q", len(encoded)) + encoded + body


def entry(shape: list, start: int, end: int, dtype="F32") -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [start, end]}


def test_refuses_tensors_that_share_their_bytes():
    """Each entry was copied out of the file: a few MB named by thousands of overlapping entries made the API
    process copy terabytes (a 1 GB upload is allowed), so every job of that backend was lost with it."""
    body = torch.ones(256 * 1024).numpy().tobytes()
    entries = {f"junk.{i}": entry([256 * 1024], 0, len(body)) for i in range(3)}
    with pytest.raises(LoraFormatError, match="overlap"):
        normalize_upload(handmade(entries, body))


MODULE = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
PAIR = {f"{MODULE}.lora_down.weight": entry([1, 1], 0, 4), f"{MODULE}.lora_up.weight": entry([1, 1], 4, 8)}


@pytest.mark.parametrize("data, reason", [
    (handmade({f"{MODULE}.lora_down.weight": entry([1, 1], 0, 4, dtype=["F32"])}, b"\0" * 4), "malformed"),
    (handmade({f"{MODULE}.lora_down.weight": entry([-1, -1], 0, 4), f"{MODULE}.lora_up.weight": entry([1, 1], 4, 8)},
              b"\0" * 8), "malformed"),
    (struct.pack("<Q", 200_006) + b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}", "not a .safetensors file"),
    (handmade(PAIR | {f"{MODULE}.alpha": entry([0], 8, 8)}, b"\0" * 8), "alpha .* holds no value"),
    (handmade({f"{MODULE}.lora_down.weight": entry([0, 16], 0, 0), f"{MODULE}.lora_up.weight": entry([16, 0], 0, 0),
               f"{MODULE}.alpha": entry([], 0, 4)}, b"\0" * 4), "rank 0"),
    (handmade(PAIR, b"\0" * 8, {"lora_adapter_metadata": "7"}), "lora_adapter_metadata"),
    (handmade(PAIR, b"\0" * 8, {"lora_adapter_metadata": json.dumps({"unet.lora_alpha": None})}),
     "lora_adapter_metadata"),
    (handmade(PAIR, b"\0" * 8, {"lora_adapter_metadata": json.dumps({"unet.lora_alpha": 1,
                                                                       "unet.alpha_pattern": [1]})}),
     "lora_adapter_metadata"),
    (handmade({"lora_unet_middle_block_5_proj_in.lora_down.weight": entry([1, 1], 0, 4),
               "lora_unet_middle_block_5_proj_in.lora_up.weight": entry([1, 1], 4, 8)}, b"\0" * 8), "middle_block.5"),
    (handmade({"lora_unet_input_blocks_1.lora_down.weight": entry([1, 1], 0, 4),
               "lora_unet_input_blocks_1.lora_up.weight": entry([1, 1], 4, 8)}, b"\0" * 8), "input_blocks.1"),
], ids=["dtype-list", "negative-shape", "deep-json", "empty-alpha", "rank-0", "metadata-number", "alpha-null",
        "pattern-list", "middle-block-5", "input-blocks-short"])
def test_refuses_malformed_files_with_a_reason_not_a_crash(data, reason):
    """Each of these was an IndexError, KeyError, TypeError, ZeroDivisionError or RecursionError: a 500."""
    with pytest.raises(LoraFormatError, match=reason):
        normalize_upload(data)


@pytest.mark.parametrize("targets", ["CrossAttention", '{"a": 1}', "[1, 2]"])
def test_refuses_cloneofsimo_target_classes_that_are_not_a_list_of_names(targets):
    """lora_diffusion writes them as a JSON list of class names; anything else was stored as given, and every job
    with the LoRA then failed in the worker (a JSONDecodeError, or no module order that fits)."""
    clone = {"unet:0:up": torch.ones(16, RANK), "unet:0:down": torch.ones(RANK, 16)}
    with pytest.raises(LoraFormatError, match="cloneofsimo target classes"):
        normalize_upload(save(clone, {"unet": targets}))


def test_refuses_two_matrices_for_one_module():
    """peft's state dict of a model holding two adapters names each module twice: one of them was kept silently,
    down from one adapter and up from the other where their order interleaved."""
    target = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    sd = {f"base_model.model.{target}.lora_{ab}.{adapter}.weight": torch.ones(RANK, 16) if ab == "A" else
          torch.ones(16, RANK) for adapter in ("default", "other") for ab in "AB"}
    with pytest.raises(LoraFormatError, match=rf"two down \(lora_A\) matrices for unet\.{target}"):
        normalize_upload(save(sd))


LYCORIS_MODULE = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"


def lycoris(**weights: tuple[int, ...]) -> bytes:
    """A module as LyCORIS' kohya network saves it (lycoris/modules/*.py): its own weight names, fp16, an alpha."""
    tensors = {f"{LYCORIS_MODULE}.{name}": torch.ones(shape, dtype=torch.float16) for name, shape in weights.items()}
    return save(tensors | {f"{LYCORIS_MODULE}.alpha": torch.tensor(1.0, dtype=torch.float16)},
                {"ss_network_module": "lycoris.kohya"})


@pytest.mark.parametrize("data, kind, key", [
    (lycoris(hada_w1_a=(16, 2), hada_w1_b=(2, 16), hada_w2_a=(16, 2), hada_w2_b=(2, 16)), "LyCORIS LoHa", "hada_w1_a"),
    (lycoris(lokr_w1=(4, 4), lokr_w2_a=(4, 2), lokr_w2_b=(2, 4)), "LyCORIS LoKr", "lokr_w1"),
    (lycoris(oft_blocks=(4, 4, 4)), "LyCORIS OFT", "oft_blocks"),
    (lycoris(weight=(16,), on_input=()), "LyCORIS IA3", "on_input"),
    (lycoris(diff=(16, 16), diff_b=(16,)), "LyCORIS full", "diff"),
    (lycoris(lora_down=(2, 16), lora_up=(16, 2), dora_scale=(1, 16)), "DoRA", "dora_scale"),
], ids=["loha", "lokr", "oft", "ia3", "full", "dora"])
def test_refuses_lycoris_algorithms_other_than_lora_and_says_which(data, kind, key):
    with pytest.raises(LoraFormatError, match=rf"^{kind} weights are not supported, only plain LoRA .*found "
                                              rf"'{LYCORIS_MODULE}\.{key}'.*export or retrain it as a plain LoRA"):
        normalize_upload(data)


def test_refuses_nan_or_infinite_weights_and_embeddings():
    """fp16 overflows to inf: a diverged training saves NaN/inf, which would make every picture NaN (black)."""
    module = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
    good = {f"{module}.lora_down.weight": torch.ones(RANK, 16, dtype=torch.float16),
            f"{module}.lora_up.weight": torch.ones(16, RANK, dtype=torch.float16),
            f"{module}.alpha": torch.tensor(1.0, dtype=torch.float16)}
    normalize_upload(save(good))
    nan = dict(good, **{f"{module}.lora_up.weight": torch.full((16, RANK), float("nan"), dtype=torch.float16)})
    with pytest.raises(LoraFormatError, match=r"LoRA for unet\.down_blocks.*attn1\.to_q holds NaN or infinite"):
        normalize_upload(save(nan))
    inf_alpha = dict(good, **{f"{module}.alpha": torch.tensor(float("inf"), dtype=torch.float16)})
    with pytest.raises(LoraFormatError, match="holds NaN or infinite values"):
        normalize_upload(save(inf_alpha))
    clone = {"unet:0:up": torch.ones(16, RANK, dtype=torch.float16), "unet:0:down": torch.ones(RANK, 16,
                                                                                               dtype=torch.float16)}
    embedding = torch.ones(16)
    embedding[5] = float("inf")
    with pytest.raises(LoraFormatError, match=r"token embedding '<s1>' holds NaN or infinite values"):
        normalize_upload(save(clone | {"<s1>": embedding}, {"unet": '["Attention"]', "<s1>": "<embed>"}))
