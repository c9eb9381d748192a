"""read_header_only: a stored LoRA's header from its first bytes, as the Products page reads it."""

import pytest

from backend.lora.safetensors_file import LoraFormatError, Tensor, read_header_only, write_safetensors


def reader(data: bytes, asked: list[int]):
    def read_head(length: int) -> bytes:
        asked.append(length)
        return data[:length]
    return read_head


def test_the_header_is_read_without_the_body():
    import numpy as np

    data = write_safetensors({"unet.a.lora_A.weight": Tensor.from_array(np.zeros((4, 64), np.float32), "F32")},
                             {"modelspec.title": "mug"})
    asked = []
    header, metadata = read_header_only(reader(data, asked))
    assert list(header) == ["unet.a.lora_A.weight"] and metadata == {"modelspec.title": "mug"}
    assert max(asked) < len(data) - 4 * 64 * 4 + 1, "the tensor's bytes were not asked for"


@pytest.mark.parametrize("data", [b"", b"PK\x03\x04" + b"\0" * 20, (10).to_bytes(8, "little") + b"{}",
                                  (4).to_bytes(8, "little") + b"[1,2]", (2).to_bytes(8, "little") + b"xx"])
def test_what_is_not_a_safetensors_header_is_refused(data):
    with pytest.raises(LoraFormatError):
        read_header_only(reader(data, []))
