"""backend.tools.template_samples makes one small JPEG per style (the tiny model here, a real one for the
repo), and the gallery shows a style's sample on its card when there is one."""

import io
import json

import pytest
from PIL import Image

from backend.tools import template_samples
from frontend.views import styles


def test_the_art_styles_get_small_square_samples_from_a_photo(tiny_model, tmp_path):
    photo = tmp_path / "dog.png"
    Image.new("RGB", (96, 64), (120, 90, 60)).save(photo)
    written = template_samples.make(template_samples_args(tiny_model, tmp_path, photo=photo))
    art = template_samples.wanted(json.loads(template_samples.TEMPLATES.read_text()), everything=False)
    assert [p.stem for p in written] == [t["id"] for t in art] and len(art) >= 8
    for path in written:
        with Image.open(io.BytesIO(path.read_bytes())) as image:
            assert image.format == "JPEG" and image.size == (48, 48)
        assert path.stat().st_size < 20_000, "small: the repo carries them"
    assert styles.sample("art-oil-painting", tmp_path / "out") == tmp_path / "out" / "art-oil-painting.jpg"
    assert styles.sample("no-such-style", tmp_path / "out") is None


def test_art_styles_need_a_photo(tiny_model, tmp_path):
    with pytest.raises(SystemExit, match="--photo is needed"):
        template_samples.make(template_samples_args(tiny_model, tmp_path, photo=None))


def template_samples_args(model, tmp_path, photo):
    return template_samples.parse_args(
        ["--model", str(model), "--out", str(tmp_path / "out"), "--size", "48", "--steps", "4", "--device", "cpu",
         "--work", str(tmp_path / "work")] + (["--photo", str(photo)] if photo else []))
