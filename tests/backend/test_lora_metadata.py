"""A LoRA stored as a product's keeps what its own header says about it (kohya's `ss_*`, the SAI model spec's
`modelspec.*`, which A1111, ComfyUI and Civitai show), whether uploaded or trained: backend.lora.check.normalize_lora,
the one step both are stored through, within backend.lora.metadata's budget. The loader's keys win, and nothing
else of the header is kept."""

import json
import logging
import uuid

import numpy as np
import pytest
import safetensors.numpy

from backend.lora.check import normalize_lora
from backend.lora.formats import normalize_upload
from backend.lora.metadata import MAX_OWN_BYTES
from backend.lora.safetensors_file import Tensor, read_safetensors, write_safetensors

MODULE = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"  # 16 wide in, 16 out: the tiny UNet's
# What a LoRA's author wrote, as kohya's sd-scripts and the SAI model spec name it.
AUTHOR = {
    "ss_output_name": "amberBottle_v2", "ss_sd_model_name": "v1-5-pruned-emaonly.safetensors",
    "ss_network_module": "networks.lora", "ss_network_dim": "2", "ss_network_alpha": "1",
    "ss_tag_frequency": json.dumps({"10_amber": {"amber bottle": 12, "glass": 7}}),
    "modelspec.sai_model_spec": "1.0.0", "modelspec.architecture": "stable-diffusion-v1/lora",
    "modelspec.title": "Amber bottle v2", "modelspec.trigger_phrase": "amber bottle",
    "modelspec.description": "An amber glass bottle, trained on 12 photos", "modelspec.author": "Ada Lovelace",
    "modelspec.license": "CreativeML Open RAIL-M",
}
# What is not kept: A1111's hashes of the file as it was, a path of the author's machine, and the loader's own keys
# as the file says them (the converted file says them anew).
OTHERS = {"sshs_model_hash": "5f2c0e", "training_folder": "/home/ada/datasets/amber", "format": "np",
          "source_format": "peft"}
LOADER = {"format": "pt", "showroom_lora": "1", "source_format": "kohya"}


def kohya_file(metadata: dict[str, str]) -> bytes:
    """A kohya-layout LoRA of one module of the tiny UNet, as sd-scripts writes it (fp16, a 0-d alpha)."""
    rng = np.random.default_rng(0)
    tensors = {f"{MODULE}.lora_down.weight": Tensor.from_array(rng.standard_normal((2, 16)), "F16"),
               f"{MODULE}.lora_up.weight": Tensor.from_array(rng.standard_normal((16, 2)), "F16"),
               f"{MODULE}.alpha": Tensor.from_array(np.array(1.0), "F32")}
    return write_safetensors(tensors, metadata)


def test_an_upload_keeps_its_own_ss_and_modelspec_keys_and_nothing_else():
    stored = normalize_lora(kohya_file(AUTHOR | OTHERS), None)
    assert read_safetensors(stored)[1] == AUTHOR | LOADER
    assert read_safetensors(stored)[0] == read_safetensors(normalize_upload(kohya_file({})))[0], "tensors unchanged"
    assert set(safetensors.numpy.load(stored)) == {f"unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"
                                                   f".lora_{part}.weight" for part in "AB"}, "safetensors reads it"


def test_a_file_that_says_nothing_of_itself_is_stored_as_converted():
    data = kohya_file(OTHERS)
    assert normalize_lora(data, None) == normalize_upload(data)


@pytest.mark.parametrize("words, dropped", [(2_000, ["modelspec.thumbnail"]),
                                            (20_000, ["modelspec.thumbnail", "ss_tag_frequency"])],
                         ids=["thumbnail", "thumbnail-and-tags"])
def test_past_the_budget_the_largest_values_are_left_out_first_and_named_in_the_log(caplog, words, dropped):
    """A header may be megabytes (an embedded thumbnail, every caption's words): nothing is refused for it, but a
    stored product's file keeps at most MAX_OWN_BYTES of them, leaving out the largest values first."""
    big = {"modelspec.thumbnail": "data:image/png;base64," + "A" * 2_000_000,
           "ss_tag_frequency": json.dumps({"10_amber": {f"word{i}": i for i in range(words)}})}
    fits = len(json.dumps(AUTHOR | {"ss_tag_frequency": big["ss_tag_frequency"]})) <= MAX_OWN_BYTES
    assert fits == ("ss_tag_frequency" not in dropped), "the tags alone fit, or do not, as the case says"
    with caplog.at_level(logging.WARNING, "showroom.lora"):
        stored = normalize_lora(kohya_file(AUTHOR | big), None)
    kept = {key: value for key, value in read_safetensors(stored)[1].items() if key not in LOADER}
    assert kept == {key: value for key, value in (AUTHOR | big).items() if key not in dropped}
    assert len(json.dumps(kept, separators=(",", ":"))) <= MAX_OWN_BYTES
    assert all(key in caplog.text for key in dropped) and "left out" in caplog.text


def test_a_trained_file_is_titled_as_its_product():
    """The trained file is named after the worker's own file (lora.safetensors); the rest of what it says stays."""
    trained = kohya_file({"modelspec.title": "lora", "ss_output_name": "lora", "modelspec.trigger_phrase": "sks jar"})
    metadata = read_safetensors(normalize_lora(trained, None, title="amber-jar"))[1]
    assert metadata == LOADER | {"modelspec.title": "amber-jar", "ss_output_name": "amber-jar",
                                 "modelspec.trigger_phrase": "sks jar"}


# ----- over HTTP -----

def test_upload_over_http_stores_the_authors_metadata(backend):
    name = f"authored-{uuid.uuid4().hex[:8]}"  # the shared backend: a name no other test uses (a browser test adds
    r = backend.add_product(name, "zwx bottle", kohya_file(AUTHOR | OTHERS))  # "amber-bottle" and teaches it)
    assert r.status_code == 201, r.text
    try:
        assert read_safetensors(backend.storage.get(f"products/{name}.safetensors"))[1] == AUTHOR | LOADER
    finally:
        backend.delete(f"/v1/products/{name}")
