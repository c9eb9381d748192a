"""Reading the settings out of a dropped PNG: never decoding a picture too large to hold, and never a value the
Create page's widgets refuse, whatever its text chunks say."""

import json
import struct
import zlib

import pytest
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


def png_with(**text: str) -> bytes:
    """A tiny PNG carrying these text chunks."""
    from io import BytesIO

    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    out = BytesIO()
    Image.new("RGB", (8, 8)).save(out, "PNG", pnginfo=info)
    return out.getvalue()


HOSTILE = {
    "A1111 steps not a number": png_with(parameters="a cat\nSteps: nan, Seed: 1"),
    "A1111 seed infinite": png_with(parameters="a cat\nSteps: 20, Seed: inf"),
    "A1111 strength past 1": png_with(parameters="a cat\nSteps: 20, Denoising strength: 5"),
    "width a word": png_with(showroom=json.dumps({"prompt": "x", "width": "wide"})),
    "width infinite": png_with(showroom='{"prompt": "x", "width": Infinity}'),
    "steps a list": png_with(showroom=json.dumps({"prompt": "x", "steps": [1]})),
    "images a word": png_with(showroom=json.dumps({"prompt": "x", "num_images": "many"})),
    "placement x a word": png_with(showroom=json.dumps({"prompt": "x", "placement": {"x": "left"}})),
    "strength past 1, restyle": png_with(showroom=json.dumps({"prompt": "x", "strength": 9, "mode": "restyle"})),
    "strength not a number": png_with(showroom='{"prompt": "x", "strength": NaN, "mode": "restyle"}'),
    "unknown mode": png_with(showroom=json.dumps({"prompt": "x", "mode": "paint"})),
    "product a list": png_with(showroom=json.dumps({"prompt": "x", "product": ["mug"]})),
    "template an object": png_with(showroom=json.dumps({"prompt": "x", "template": {"id": "beach"}})),
    "reflection past the slider": png_with(showroom=json.dumps({"prompt": "x", "mode": "place", "reflection": 1})),
    "reflection a word": png_with(showroom=json.dumps({"prompt": "x", "mode": "place", "reflection": "shiny"})),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_png_with_hostile_settings_fills_the_form_with_values_its_widgets_take(name):
    """Whatever a PNG's text chunks hold, the page either says in words that it has no settings or gets values
    within the Create page's widgets' ranges: a value a widget refuses breaks the page for the rest of the session
    (it stays in session_state), and an exception in the upload's callback shows a traceback."""
    spec, why = reuse.png_settings(HOSTILE[name])
    if spec is None:
        assert why
        return
    values = reuse.form_values(spec, None, 512)
    assert isinstance(values["product"], str) and isinstance(values["prompt"], str)
    assert values["template_id"] is None or isinstance(values["template_id"], str)
    assert values["mode"] in ("generate", "restyle", "place")
    assert 0.0 <= values["strength"] <= 1.0
    assert 1 <= values["steps"] <= 150 and 0.0 <= values["guidance"] <= 30.0
    assert 64 <= values["width"] <= 2048 and 64 <= values["height"] <= 2048
    assert values["seed"] is None or 0 <= values["seed"] <= reuse.MAX_SEED
    assert "num_images" not in values or 1 <= values["num_images"] <= 16
    assert "place_scale" not in values or 0.2 <= values["place_scale"] <= 1.0
    assert 0.0 <= values["reflection"] <= 0.8, "the Floor reflection slider's range"


def test_a_place_jobs_reflection_comes_back_with_its_settings():
    assert reuse.form_values({"prompt": "x", "mode": "place", "reflection": 0.35}, None, 512)["reflection"] == 0.35
    assert reuse.form_values({"prompt": "x", "mode": "place"}, None, 512)["reflection"] == 0.0, "older jobs: none"
