"""The local upscaler: a tiny random Swin2SR on CPU, tiled, its result exactly 4x the source."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.upscale.common import UpscaleError
from backend.upscale.local_engine import LocalUpscaler
from tests.factories import png_size, random_png, save_tiny_swin2sr


@pytest.fixture(scope="module")
def tiny_swin2sr(tmp_path_factory) -> Path:
    return save_tiny_swin2sr(tmp_path_factory.mktemp("tiny-swin2sr"))


def test_local_upscale_of_odd_size_is_exactly_4x(tiny_swin2sr):
    result = LocalUpscaler(str(tiny_swin2sr), device="cpu").upscale(random_png(37, 29))
    assert png_size(result) == (148, 116)
    assert Image.open(io.BytesIO(result)).mode == "RGB"


def test_local_tiles_cover_the_image_and_match_one_pass(tiny_swin2sr):
    source = random_png(37, 29, seed=1)
    whole = np.asarray(Image.open(io.BytesIO(LocalUpscaler(str(tiny_swin2sr), device="cpu").upscale(source))))
    tiled_engine = LocalUpscaler(str(tiny_swin2sr), device="cpu", tile=16, tile_overlap=4)
    calls = []
    infer = tiled_engine._infer
    tiled_engine._infer = lambda image: calls.append(image.size) or infer(image)
    tiled = np.asarray(Image.open(io.BytesIO(tiled_engine.upscale(source))))
    assert tiled.shape == whole.shape == (116, 148, 3)
    assert len(calls) == 6  # 3 columns x 2 rows of tiles
    # A random model is not smooth, so tiles differ near their seams; overall they stay close.
    assert np.abs(tiled.astype(int) - whole.astype(int)).mean() < 20


def test_local_tiles_are_pasted_where_they_belong(monkeypatch):
    """With a stand-in model (nearest-neighbour 4x), the tiled result must equal one 4x pass."""
    engine = LocalUpscaler("unused", device="cpu", tile=8, tile_overlap=3)
    monkeypatch.setattr(engine, "_infer", lambda image: np.asarray(image).repeat(4, 0).repeat(4, 1))
    source = random_png(21, 13, seed=2)
    expected = np.asarray(Image.open(io.BytesIO(source))).repeat(4, 0).repeat(4, 1)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(engine.upscale(source)))), expected)


def test_local_rejects_a_model_that_is_not_4x(tmp_path):
    model = save_tiny_swin2sr(tmp_path / "x2", upscale=2)
    with pytest.raises(UpscaleError, match="upscales 2x"):
        LocalUpscaler(str(model), device="cpu").upscale(random_png(8, 8))


def test_local_missing_model_is_an_upscale_error(tmp_path):
    with pytest.raises(UpscaleError, match="could not load"):
        LocalUpscaler(str(tmp_path), device="cpu").upscale(random_png(8, 8))
