"""TAESD_ID: the final decode through a tiny autoencoder instead of the model's VAE (issue 8's preview decoder)."""

import numpy as np
import pytest

from backend.tools.tiny import build_tiny_taesd
from tests.factories import decode_png

SPEC = {"prompt": "a perfume bottle on wet stone", "num_images": 2, "seed": 5, "steps": 2, "width": 80, "height": 64}


def test_backend_with_taesd_stores_images_of_the_requested_size_decoded_by_it(backend, make_backend, tmp_path):
    fast = make_backend(TAESD_ID=str(build_tiny_taesd(tmp_path / "taesd")))
    job = fast.wait_job(fast.submit(SPEC)["id"])
    assert job["status"] == "succeeded", job
    with_taesd = [decode_png(fast.storage.get(img["key"])) for img in job["images"]]
    assert [a.shape[:2] for a in with_taesd] == [(64, 80)] * 2

    vae_job = backend.wait_job(backend.submit(SPEC)["id"])
    with_vae = [decode_png(backend.storage.get(img["key"])) for img in vae_job["images"]]
    # same seeds, same latents: only the decoder differs, so the pictures must too
    assert all(np.abs(a.astype(int) - b.astype(int)).mean() > 5 for a, b in zip(with_taesd, with_vae))
    assert "decoding with TAESD" in fast.log()


def test_a_taesd_that_does_not_fit_the_model_is_refused_with_the_reason(tiny_model, tmp_path, torch_one_thread):
    from diffusers import AutoencoderTiny

    from backend.gpu.pipeline import Generator
    from backend.storage import LocalStorage

    AutoencoderTiny(encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8), num_encoder_blocks=(1, 1),
                    num_decoder_blocks=(1, 1), latent_channels=16).save_pretrained(tmp_path / "sdxl-like")
    with pytest.raises(ValueError, match=r"does not fit .*16 latent channels 2x up, the model needs 4 channels"):
        Generator(str(tiny_model), "cpu", LocalStorage(tmp_path / "s"), tmp_path / "c",
                  taesd_id=str(tmp_path / "sdxl-like"))
