"""Download LoRA on an open product: there for a product Showroom has a LoRA of, absent for one without, and what
it serves is the stored LoRA in kohya's layout (built on the click). The generator is off: the page reads the
products and the LoRA from storage alone."""

import json

import numpy as np
import pytest
from streamlit.runtime.media_file_manager import MediaFileManager

from backend.contract import lora_key, product_key
from backend.lora.formats import normalize_upload
from backend.lora.kohya_export import to_kohya
from backend.lora.safetensors_file import Tensor, read_safetensors, write_safetensors
from backend.storage import LocalStorage
from tests.frontend.conftest import assert_no_exception, offline_url

LEARNT, PLACED = "amber-bottle", "felt-hat"


def cloneofsimo_lora() -> bytes:
    """A LoRA uploaded in lora_diffusion's layout (numbered modules), as the upload stores it."""
    rng = np.random.default_rng(1)
    tensors = {"unet:0:up": Tensor.from_array(rng.standard_normal((320, 4)), "F16"),
               "unet:0:down": Tensor.from_array(rng.standard_normal((4, 768)), "F16")}
    return normalize_upload(write_safetensors(tensors, {"unet": '["CrossAttention"]'}))


def stored_lora() -> bytes:
    """A small SD 1.x LoRA (768-wide cross-attention, a text-encoder module) as an upload stores it."""
    rng = np.random.default_rng(0)
    shapes = {"unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k": (320, 768),
              "unet.up_blocks.1.attentions.2.transformer_blocks.0.attn1.to_out.0": (640, 640),
              "text_encoder.text_model.encoder.layers.0.self_attn.q_proj": (768, 768)}
    tensors = {}
    for target, (out, inp) in shapes.items():
        tensors[f"{target}.lora_A.weight"] = Tensor.from_array(rng.standard_normal((4, inp)), "F16")
        tensors[f"{target}.lora_B.weight"] = Tensor.from_array(rng.standard_normal((out, 4)), "F16")
    return normalize_upload(write_safetensors(tensors, {"format": "pt"}))


@pytest.fixture
def store(tmp_path):
    storage = LocalStorage(tmp_path)
    for name, lora in ((LEARNT, stored_lora()), (PLACED, None)):
        record = {"name": name, "trigger": f"zwx {name.split('-')[1]}", "category": None, "weight": 1.0,
                  "has_lora": lora is not None, "packshot_key": None, "training": None}
        storage.put(product_key(name), json.dumps(record).encode(), "application/json")
        if lora is not None:
            storage.put(lora_key(name), lora)
    return storage


@pytest.fixture
def deferred(monkeypatch) -> dict[str, tuple]:
    """Each deferred download the page registers: file id -> (callable, mime type, file name)."""
    found = {}
    register = MediaFileManager.add_deferred

    def add_deferred(self, data_callable, mimetype, coordinates, file_name=None, **kwargs):
        file_id = register(self, data_callable, mimetype, coordinates, file_name=file_name, **kwargs)
        found[file_id] = (data_callable, mimetype, file_name)
        return file_id

    monkeypatch.setattr(MediaFileManager, "add_deferred", add_deferred)
    return found


def open_product(open_app, store, name: str):
    at = open_app({"BACKEND_URL": offline_url(), "STORAGE_URL": f"file://{store.root}"})
    at.query_params["product"] = name
    at.switch_page("app_pages/products.py").run()
    assert_no_exception(at)
    return at


def test_a_learnt_product_offers_its_lora_in_kohyas_layout(open_app, store, deferred):
    at = open_product(open_app, store, LEARNT)
    [button] = [b for b in at.download_button if b.key == "download-lora"]
    assert "AUTOMATIC1111, Forge and ComfyUI" in button.help and "“zwx bottle”" in button.help
    build, mime, file_name = deferred[button.proto.deferred_file_id]
    assert file_name == f"{LEARNT}.safetensors" and mime == "application/octet-stream"
    served = build()
    assert served == to_kohya(store.get(lora_key(LEARNT)), trigger="zwx bottle", title=LEARNT)
    tensors, metadata = read_safetensors(served)
    assert all(k.startswith(("lora_unet_", "lora_te_")) for k in tensors)
    assert metadata["modelspec.trigger_phrase"] == "zwx bottle", "the product's words, for the tools that list them"


def test_a_product_without_a_lora_has_no_lora_download(open_app, store, deferred):
    at = open_product(open_app, store, PLACED)
    assert "download-lora" not in [b.key for b in at.download_button]
    assert not deferred, "nothing is registered to be built"


def test_a_lora_uploaded_in_cloneofsimos_layout_says_why_it_has_no_download(open_app, store, deferred):
    store.put(lora_key(LEARNT), cloneofsimo_lora())
    at = open_product(open_app, store, LEARNT)
    assert "download-lora" not in [b.key for b in at.download_button], "no button whose click can only fail"
    assert not deferred
    (why,) = [c.value for c in at.caption if "cloneofsimo" in c.value]
    assert why.startswith("No LoRA download: it was uploaded in cloneofsimo's layout") and "original file" in why, why

    store.put(lora_key(LEARNT), stored_lora())  # taught again: the same key, a file in Showroom's layout
    at.run()
    assert_no_exception(at)
    assert "download-lora" in [b.key for b in at.download_button], "the new file is read, not a kept answer"
    assert not [c for c in at.caption if "cloneofsimo" in c.value]
