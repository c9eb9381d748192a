"""Reading the settings out of a dropped PNG never decodes a picture too large to hold."""

import json
import struct
import zlib

from PIL import ImageFile

from frontend import reuse


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_png(side: int, spec: dict) -> bytes:
    """A side x side RGB PNG of a few hundred KB (every row zero), its settings ahead of the pixels."""
    squeeze, row = zlib.compressobj(9), b"\0" * (1 + 3 * side)
    pixels = b"".join(squeeze.compress(row) for _ in range(side)) + squeeze.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
            + chunk(b"tEXt", b"showroom\0" + json.dumps(spec).encode()) + chunk(b"IDAT", pixels)
            + chunk(b"IEND", b""))


def test_the_settings_of_a_huge_png_are_read_without_decoding_it(monkeypatch):
    data = huge_png(7000, {"prompt": "a bottle", "steps": 20})  # 49 MP: 147 MB once decoded
    assert len(data) < 1_000_000

    def no_decoding(self):
        raise AssertionError("the pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    spec, why = reuse.png_settings(data)
    assert why is None and spec == {"prompt": "a bottle", "steps": 20}
