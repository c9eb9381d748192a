"""How many workers WORKERS=auto starts: one per GPU this process may use."""

import pytest

from backend.gpu.devices import count_visible, has_fp16_weights

FOUR = "\n".join(f"GPU {i}: NVIDIA H100 80GB HBM3 (UUID: GPU-{i}aaa-bbbb)" for i in range(4))
MIG = """GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-0aaa-bbbb)
  MIG 3g.20gb     Device  0: (UUID: MIG-11aa-22bb)
  MIG 3g.20gb     Device  1: (UUID: MIG-33cc-44dd)"""


@pytest.mark.parametrize("visible, expected", [
    (None, 4),  # nothing set: every GPU
    ("0,1", 2),  # a box shared with another service
    ("3", 1),
    ("GPU-2aaa-bbbb,GPU-0aaa-bbbb", 2),
    ("", 0),
    ("-1", 0),
    ("0,7,1", 1),  # CUDA stops at the first invalid entry
    ("GPU-nope", 0),
])
def test_cuda_visible_devices_narrows_the_gpus_as_cuda_does(visible, expected):
    assert count_visible(FOUR, visible) == expected


def test_mig_instances_named_in_cuda_visible_devices_count_one_each():
    assert count_visible(MIG, None) == 1
    assert count_visible(MIG, "MIG-11aa-22bb,MIG-33cc-44dd") == 2


def test_no_gpus_listed_means_none():
    assert count_visible("", None) == 0 and count_visible("No devices were found", "0") == 0


def test_fp16_weights_are_found_in_a_local_folder_or_known_by_the_hub_id(tmp_path):
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    assert not has_fp16_weights(str(tmp_path))
    (tmp_path / "unet" / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"")
    assert has_fp16_weights(str(tmp_path))
    (tmp_path / "vae").mkdir()  # fp16 files for the UNet only: the VAE loads its default weights
    (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    assert has_fp16_weights(str(tmp_path), "unet") and not has_fp16_weights(str(tmp_path), "vae")
    assert has_fp16_weights("stabilityai/stable-diffusion-xl-base-1.0")
    assert not has_fp16_weights("segmind/tiny-sd")
