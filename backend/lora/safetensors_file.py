"""Safetensors files without torch: the one reader (every offset, size and dtype checked against the bytes,
pickles refused) and the writer, for the API process, which never imports torch. The LoRA layouts in such a
file are backend.lora.formats'."""

import json
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

MAX_HEADER = 100 * 1024 * 1024
NOT_SAFETENSORS = ("the file is not a .safetensors file ({why}); pickled .ckpt/.pt/.bin files are refused because "
                   "loading them can run code: convert the LoRA to safetensors first")


class LoraFormatError(ValueError):
    """The file is not a LoRA we can load, or not one for this base model; the message says how to fix it."""


_ITEMSIZE = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}
_NUMPY = {"F16": np.float16, "F32": np.float32, "F64": np.float64}


@dataclass
class Tensor:
    dtype: str
    shape: tuple[int, ...]
    raw: bytes

    def array(self) -> np.ndarray:
        """The values as float32 (bf16 widened bit-exactly)."""
        if self.dtype == "BF16":
            bits = np.frombuffer(self.raw, dtype="<u2").astype(np.uint32) << 16
            return bits.view(np.float32).reshape(self.shape)
        return np.frombuffer(self.raw, dtype=np.dtype(_NUMPY[self.dtype]).newbyteorder("<")).astype(
            np.float32).reshape(self.shape)

    @classmethod
    def from_array(cls, arr: np.ndarray, dtype: str) -> "Tensor":
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if dtype == "BF16":  # round to nearest even on the upper 16 bits
            bits = arr.view(np.uint32)
            raw = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2").tobytes()
        else:
            raw = arr.astype(np.dtype(_NUMPY[dtype]).newbyteorder("<")).tobytes()
        return cls(dtype, tuple(arr.shape), raw)


def read_header_only(read_head: Callable[[int], bytes]) -> tuple[dict[str, dict], dict[str, str]]:
    """The header and metadata of a safetensors file from its first bytes alone, `read_head(n)` giving the first n
    (a range read of a stored file): enough to decide what a file is, never to read its tensors (their offsets are
    not checked against a body that was not read). LoraFormatError as read_safetensors_header says."""
    first = read_head(8)
    size = struct.unpack("<Q", first)[0] if len(first) == 8 else 0
    if not 2 <= size <= MAX_HEADER:
        raise LoraFormatError(NOT_SAFETENSORS.format(why="no safetensors header"))
    head = read_head(8 + size)
    if len(head) < 8 + size or head[8:9] != b"{":
        raise LoraFormatError(NOT_SAFETENSORS.format(why="no safetensors header"))
    try:
        header = json.loads(head[8:])
    except (ValueError, RecursionError):
        raise LoraFormatError(NOT_SAFETENSORS.format(why="its header is not JSON")) from None
    if not isinstance(header, dict):
        raise LoraFormatError(NOT_SAFETENSORS.format(why="its header is not a JSON object"))
    metadata = header.pop("__metadata__", None) or {}
    return header, metadata if isinstance(metadata, dict) else {}


def read_safetensors_header(data: bytes) -> tuple[dict[str, dict], dict[str, str], int]:
    """The one safetensors reader's first half, without torch and without copying a tensor: the header
    (tensor name -> dtype, shape, offsets; every offset checked against the bytes), its metadata and
    where the tensors start. Pickles and truncated files are refused with a LoraFormatError that says so."""
    if len(data) < 10:
        raise LoraFormatError(NOT_SAFETENSORS.format(why="empty or too short"))
    (size,) = struct.unpack("<Q", data[:8])
    if size < 2 or size > min(MAX_HEADER, len(data) - 8) or data[8:9] != b"{":
        why = "it is a zip, e.g. torch.save output" if data[:2] == b"PK" else "no safetensors header"
        raise LoraFormatError(NOT_SAFETENSORS.format(why=why))
    try:
        header = json.loads(data[8:8 + size])
    except (ValueError, RecursionError):  # RecursionError: arrays nested deeper than the parser goes
        raise LoraFormatError(NOT_SAFETENSORS.format(why="its header is not JSON")) from None
    if not isinstance(header, dict):
        raise LoraFormatError(NOT_SAFETENSORS.format(why="its header is not a JSON object"))
    metadata = header.pop("__metadata__", None) or {}
    body_length = len(data) - 8 - size
    spans = []
    for name, info in header.items():
        try:  # dtype and shape are read here so a malformed entry fails now, not in a later reader
            dtype, shape, (start, end) = info["dtype"], info["shape"], info["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise LoraFormatError(f"the safetensors header is malformed at tensor {name!r}") from None
        if not (isinstance(dtype, str) and isinstance(shape, list) and all(_count(d) for d in shape)
                and _count(start) and _count(end) and start <= end):
            raise LoraFormatError(f"the safetensors header is malformed at tensor {name!r}")
        if end > body_length:
            raise LoraFormatError(f"the file is truncated: tensor {name!r} runs past its end; upload it again")
        if end > start:
            spans.append((start, end, name))
    # Tensors share no bytes (safetensors' own reader refuses such a file too). Each one is copied out of the
    # file, so a few MB named by thousands of overlapping entries would take terabytes of memory.
    spans.sort()
    for (_, end, first), (start, _, second) in zip(spans, spans[1:]):
        if start < end:
            raise LoraFormatError(f"the safetensors header is malformed: tensors {first!r} and {second!r} overlap")
    if not isinstance(metadata, dict):
        raise LoraFormatError("the safetensors metadata is not a JSON object")
    return header, {str(k): str(v) for k, v in metadata.items()}, 8 + size


def _count(value) -> bool:
    """A whole number >= 0, as the header's sizes and offsets must be (JSON true is no number)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def read_safetensors(data: bytes) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file, every offset and size checked against the bytes."""
    header, metadata, body_start = read_safetensors_header(data)
    body = memoryview(data)[body_start:]
    tensors = {}
    for name, info in header.items():
        dtype, shape, (start, end) = info["dtype"], tuple(int(d) for d in info["shape"]), info["data_offsets"]
        if dtype not in _ITEMSIZE:
            raise LoraFormatError(f"tensor {name!r} has dtype {dtype}; LoRA weights are read as F16, BF16, F32 or "
                                  "F64 only (not fp8 or integers): save the LoRA in one of those")
        if end - start != math.prod(shape) * _ITEMSIZE[dtype]:  # Python ints: a huge shape cannot wrap around
            raise LoraFormatError(f"tensor {name!r}: its byte size does not match its shape {list(shape)}")
        tensors[name] = Tensor(dtype, shape, bytes(body[start:end]))
    return tensors, metadata


def write_safetensors(tensors: dict[str, Tensor], metadata: dict[str, str]) -> bytes:
    header: dict = {"__metadata__": metadata}
    offset, chunks = 0, []
    for name in sorted(tensors):
        t = tensors[name]
        header[name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + len(t.raw)]}
        offset += len(t.raw)
        chunks.append(t.raw)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    return struct.pack("<Q", len(encoded)) + encoded + b"".join(chunks)
