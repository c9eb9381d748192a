"""Judging an uploaded LoRA by its content: safetensors only, never a pickle."""

import json
import struct

MAX_HEADER = 100 * 1024 * 1024


def read_safetensors_header(data: bytes) -> dict:
    """The header of a safetensors file, checked against the file's length; ValueError says what is wrong."""
    if len(data) < 8:
        raise ValueError("the file is not a .safetensors file (too short); pickled .ckpt/.pt/.bin files are "
                         "refused because loading them can run code: convert to safetensors first")
    (size,) = struct.unpack("<Q", data[:8])
    if size < 2 or size > min(MAX_HEADER, len(data) - 8):
        raise ValueError("the file is not a .safetensors file (bad header); pickled .ckpt/.pt/.bin files are "
                         "refused because loading them can run code: convert to safetensors first")
    try:
        header = json.loads(data[8:8 + size])
    except ValueError:
        raise ValueError("the file is not a .safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise ValueError("the file is not a .safetensors file (its header is not a JSON object)")
    end = 8 + size
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and 0 <= offsets[0] <= offsets[1]):
            raise ValueError(f"the safetensors header is malformed at tensor {name!r}")
        if end + offsets[1] > len(data):
            raise ValueError(f"the file is truncated: tensor {name!r} runs past the end of the file")
    return header


def normalize_lora(data: bytes) -> bytes:
    """Return the LoRA in the canonical layout the workers load (diffusers, peft, kohya, cloneofsimo in)."""
    from backend.lora_formats import normalize_upload

    read_safetensors_header(data)  # a cheap first look, with the message for pickles
    return normalize_upload(data)
