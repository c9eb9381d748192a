"""A NaN or all-black picture is never stored as a success: in half precision it is decoded again in
fp32; if that does not help, the image fails with the reason. The real tiny pipeline, with its VAE
in bfloat16 (CPU's half precision) and a decode that overflows where the test says so."""

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from backend.gpu.pipeline import Generator
from backend.storage import LocalStorage


@pytest.fixture(scope="module")
def gen(tiny_model, tmp_path_factory, torch_one_thread):
    root = tmp_path_factory.mktemp("bad-pixels")
    return Generator(str(tiny_model), "cpu", LocalStorage(root / "s"), root / "c")


@pytest.fixture
def half_vae(gen, monkeypatch):
    """The decoder in bfloat16, as on a GPU in fp16; `overflow` says which dtypes decode to NaN/black."""
    vae = gen.decoder
    real_decode = vae.decode
    state = {"overflow": set(), "fill": float("nan")}

    def decode(z, return_dict=False):
        out = real_decode(z, return_dict=False)[0]
        if z.dtype in state["overflow"]:
            out = torch.full_like(out, state["fill"])
        return (out,)

    monkeypatch.setattr(vae, "decode", decode)
    monkeypatch.setattr(gen, "dtype", torch.bfloat16)
    monkeypatch.setattr(gen, "decoder_dtype", torch.bfloat16)
    vae.to(torch.bfloat16)
    yield state
    vae.to(torch.float32)


def decode(gen, z: torch.Tensor) -> list:
    with torch.inference_mode():  # as in Generator.generate
        return gen._decode(z)


def latents(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 4, 8, 8, generator=torch.Generator().manual_seed(3))


def test_a_nan_decode_in_half_precision_is_decoded_again_in_fp32(gen, half_vae, caplog):
    half_vae["overflow"] = {torch.bfloat16}
    with caplog.at_level(logging.WARNING):
        out = decode(gen, latents())
    assert all(isinstance(img, Image.Image) for img in out)
    assert all(np.isfinite(np.asarray(img, dtype=float)).all() and np.asarray(img).max() > 2 for img in out)
    assert "decoding again in fp32" in caplog.text
    assert gen.decoder.dtype == torch.bfloat16, "the decoder goes back to its working precision"


def test_nan_in_every_precision_fails_the_image_with_the_reason(gen, half_vae):
    half_vae["overflow"] = {torch.bfloat16, torch.float32}
    assert decode(gen, latents(1)) == ["the decoder produced NaN values (numerical overflow)"]


def test_an_all_black_picture_is_not_a_success(gen, half_vae):
    half_vae["overflow"], half_vae["fill"] = {torch.bfloat16, torch.float32}, -1.0  # -1 is black after postprocess
    assert decode(gen, latents(1)) == ["the image is entirely black"]


def test_nan_latents_fail_before_any_decode(gen):
    bad = latents(2)
    bad[1, 0, 0, 0] = float("nan")
    out = decode(gen, bad)
    assert isinstance(out[0], Image.Image)
    assert out[1] == "the model produced NaN values (numerical overflow); try another seed"


def test_latents_decoded_several_per_call_give_the_same_pictures_as_one_by_one(gen, monkeypatch):
    z = latents(3)
    one_by_one = decode(gen, z)
    calls = []
    real_decode = gen.decoder.decode
    monkeypatch.setattr(gen.decoder, "decode",
                        lambda x, return_dict=False: calls.append(len(x)) or real_decode(x, return_dict=False))
    side = z.shape[-1] * gen.t2i.vae_scale_factor
    monkeypatch.setattr(gen, "decode_pixels", 2 * side * side)  # two pictures per call, as on a GPU
    together = decode(gen, z)
    assert calls == [2, 1]
    for a, b in zip(one_by_one, together):
        assert np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max() <= 1


def test_the_decoder_is_put_back_in_its_precision_before_each_decode(gen, monkeypatch):
    """SDXL's img2img pipeline casts an fp32 VAE back to fp16 after encoding a photo."""
    monkeypatch.setattr(gen, "decoder_dtype", torch.float32)
    gen.decoder.to(torch.bfloat16)
    try:
        out = decode(gen, latents(1))
    finally:
        gen.decoder.to(torch.float32)
    assert isinstance(out[0], Image.Image)
    assert gen.decoder.dtype == torch.float32
