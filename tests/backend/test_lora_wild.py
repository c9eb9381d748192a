"""LoRAs from the wild, end to end in the worker's pipeline (issue 21): a format is supported when a picture can be made
with it, again and again, alone and stacked, and the worker is left as it was. Each file is written as its tool writes
it (tests/backend/wild_loras.py), checked as an upload is (`normalize_lora`), and run by the worker's Generator on the
tiny SD 1.x or SDXL model: 64x64, 2 steps, on the CPU."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save

from backend.contract import lora_key
from backend.gpu import worker
from backend.gpu.messages import Done, ImageFailed, LoraTask, Started, Task
from backend.gpu.pipeline import Generator
from backend.lora.check import normalize_lora
from backend.lora.formats import LoraNotApplied, normalize_upload
from backend.storage import LocalStorage
from tests.backend import wild_loras

pytestmark = pytest.mark.usefixtures("torch_one_thread")

PLAIN, TRIGGER = "a perfume bottle on wet stone", "<s1> bottle on wet stone"
WITH_TOKENS = "cloneofsimo-embeddings"
BUILDERS = {
    "diffusers": wild_loras.diffusers_lora,
    "peft": wild_loras.peft_lora,
    "kohya": wild_loras.kohya_lora,
    "cloneofsimo": wild_loras.cloneofsimo_lora,
    WITH_TOKENS: wild_loras.cloneofsimo_lora,
}
# lora_diffusion predates SDXL: no cloneofsimo file was ever made for it.
CASES = [pytest.param("tiny_model", f, id=f"sd-{f}") for f in BUILDERS] + [
    pytest.param("tiny_sdxl", f, id=f"sdxl-{f}") for f in ("diffusers", "peft", "kohya")]
TOKENS = {"a": ("<s1>", "<s2>"), "b": ("<s1>",)}  # like lora_disney's <s1><s2>; every cloneofsimo LoRA has <s1>


@pytest.fixture(scope="module")
def tiny_sdxl(tiny_model, tmp_path_factory) -> Path:
    return wild_loras.build_tiny_sdxl(tmp_path_factory.mktemp("tiny-sdxl"), tiny_model / "tokenizer")


class Worker:
    """The worker's Generator on a model, with products uploaded as POST /v1/products stores them."""

    def __init__(self, model: Path, tmp_path: Path):
        self.model, self.storage = model, LocalStorage(tmp_path / "storage")
        self.gen = Generator(str(model), "cpu", self.storage, tmp_path / "cache")

    def upload(self, name: str, data: bytes, checked: bool = True) -> LoraTask:
        self.storage.put(lora_key(name), normalize_lora(data, str(self.model)) if checked else data)
        return LoraTask(name, 1.0, lora_key(name))

    def task(self, prompt: str, *loras: LoraTask, n: int = 1) -> Task:
        return Task(task_id=1, job_id="j" * 32, indices=tuple(range(n)), seeds=tuple(range(7, 7 + n)),
                    keys=tuple(f"jobs/{'j' * 32}/{i}.png" for i in range(n)), prompt=prompt, negative_prompt="",
                    steps=2, guidance_scale=7.5, width=64, height=64, strength=0.5, loras=loras)

    def draw(self, prompt: str, *loras: LoraTask) -> np.ndarray:
        (image,) = self.gen.generate(self.task(prompt, *loras), lambda: False, lambda step, total: None)
        assert isinstance(image, Image.Image), image
        return np.asarray(image, dtype=np.int16)

    def row(self, token: str) -> torch.Tensor:
        table = self.gen.t2i.text_encoder.get_input_embeddings().weight
        return table[self.gen.t2i.tokenizer.convert_tokens_to_ids(token)].detach().clone()


def differ(a: np.ndarray, b: np.ndarray) -> bool:
    return float(np.abs(a - b).mean()) > 2.0


@pytest.mark.parametrize("model_fixture, fmt", CASES)
def test_a_lora_from_the_wild_draws_alone_again_and_stacked_and_leaves_the_worker_as_it_was(
        model_fixture, fmt, request, tmp_path):
    model = request.getfixturevalue(model_fixture)
    w = Worker(model, tmp_path)
    vectors = {p: wild_loras.token_vectors(model, seed, TOKENS[p]) if fmt == WITH_TOKENS else {}
               for p, seed in (("a", 1), ("b", 2))}
    plain, before = w.draw(PLAIN), w.draw(TRIGGER)
    a, b = (w.upload(f"bottle-{p}", BUILDERS[fmt](model, seed, **({"embeddings": vectors[p]} if vectors[p] else {})))
            for p, seed in (("a", 1), ("b", 2)))

    def assert_rows(product: str, owner: dict) -> None:  # the job's token rows hold its product's vectors
        for token in vectors[product]:
            torch.testing.assert_close(w.row(token), owner[token], rtol=0, atol=0, msg=token)

    alone = w.draw(TRIGGER, a)
    assert differ(alone, before), "the product's LoRA does not change the picture"
    assert_rows("a", vectors["a"])
    np.testing.assert_array_equal(w.draw(TRIGGER, a), alone, err_msg="a second job with the product")
    other = w.draw(TRIGGER, b)
    assert differ(other, alone)
    assert_rows("b", vectors["b"])

    stacked = w.draw(TRIGGER, a, b)  # both say <s1>: the job's product (named first) gives it
    assert differ(stacked, alone) and differ(stacked, other)
    assert_rows("a", vectors["a"])
    swapped = w.draw(TRIGGER, b, a)
    assert_rows("b", vectors["b"])
    if vectors["a"]:
        assert differ(stacked, swapped), "the same LoRAs, another <s1>: the token must show"
    else:
        assert float(np.abs(stacked - swapped).mean()) < 0.5, "the same LoRAs in another order"

    np.testing.assert_array_equal(w.draw(TRIGGER, a), alone, err_msg="the product after stacking")
    np.testing.assert_array_equal(w.draw(TRIGGER, b), other, err_msg="the other product after stacking")
    np.testing.assert_array_equal(w.draw(PLAIN), plain, err_msg="a job without LoRAs after them")


# ----- what cannot be applied fails the job's images with the reason, and changes nothing -----

def canonical(tensors: dict[str, torch.Tensor]) -> bytes:
    """A file in the stored layout that skipped the upload's checks (stored before they existed)."""
    return save(tensors, {"format": "pt", "showroom_lora": "1", "source_format": "diffusers"})


def broken_files(model: Path) -> dict[str, tuple[bytes, str]]:
    to_k = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"
    nan = torch.ones(wild_loras.RANK, 16)
    nan[0, 3] = float("nan")
    return {
        "another-base-model": (normalize_upload(save({f"{to_k}.lora_A.weight": torch.ones(2, 768),
                                                      f"{to_k}.lora_B.weight": torch.ones(16, 2)})),
                               r"does not match the base model: shape mismatch at .*attn2\.to_k.*SD 1\.x"),
        "base-vocabulary-token": (normalize_upload(wild_loras.cloneofsimo_lora(
            model, 3, embeddings={"a</w>": torch.ones(16)})), r"would replace the base model's own token 'a</w>'"),
        "nan-weights": (canonical({f"{to_k}.lora_A.weight": nan, f"{to_k}.lora_B.weight": torch.ones(16, 2)}),
                        r"NaN or infinite values: the training diverged"),
        "token-vector-count": (canonical({f"{to_k}.lora_A.weight": torch.ones(2, 16), f"{to_k}.lora_B.weight":
                                          torch.ones(16, 2), "embedding:<s1>": torch.ones(2, 16)}),
                               r"token '<s1>' has 2 vector\(s\) in this LoRA but a different number in another"),
    }


@pytest.mark.parametrize("case", ["another-base-model", "base-vocabulary-token", "nan-weights", "token-vector-count"])
def test_a_lora_that_cannot_be_applied_fails_the_images_with_the_reason_and_changes_nothing(
        case, tiny_model, tmp_path):
    w = Worker(tiny_model, tmp_path)
    good = w.upload("good", wild_loras.cloneofsimo_lora(tiny_model, 1, wild_loras.token_vectors(tiny_model, 1,
                                                                                                ("<s1>",))))
    data, reason = broken_files(tiny_model)[case]
    broken = w.upload("broken", data, checked=False)
    plain, with_good, a_row = w.draw(PLAIN), w.draw(TRIGGER, good), w.row("a</w>")

    with pytest.raises(LoraNotApplied, match="^product broken's LoRA could not be applied: .*" + reason):
        w.gen.generate(w.task(TRIGGER, good, broken), lambda: False, lambda step, total: None)
    sent = []
    worker._run_task(w.gen, w.storage, w.task(TRIGGER, good, broken, n=2), SimpleNamespace(send=sent.append),
                     SimpleNamespace(value=-1), retry_s=1)
    assert [type(m) for m in sent] == [Started, ImageFailed, ImageFailed, Done]
    assert all("product broken's LoRA could not be applied: " in m.error for m in sent[1:3]), sent

    assert not any(a.startswith("broken") for names in w.gen.t2i.get_list_adapters().values() for a in names)
    torch.testing.assert_close(w.row("a</w>"), a_row, rtol=0, atol=0)
    np.testing.assert_array_equal(w.draw(TRIGGER, good), with_good)
    np.testing.assert_array_equal(w.draw(PLAIN), plain)


def test_a_loaded_lora_leaves_no_file_in_the_workers_cache(tiny_model, tmp_path):
    """The disk cache is bounded: the weights live in the pipeline once loaded (issue 16, item 12)."""
    import diffusers

    from backend.gpu.messages import LoraTask
    from backend.gpu.pipeline import Adapters
    from backend.storage import LocalStorage
    from tests.factories import make_lora

    pipe = diffusers.StableDiffusionPipeline.from_pretrained(tiny_model, safety_checker=None)
    storage = LocalStorage(tmp_path / "store")
    storage.put("products/a.safetensors", make_lora(tiny_model, seed=3))
    adapters = Adapters(pipe, storage, tmp_path / "cache")
    adapters.activate((LoraTask("a", 1.0, "products/a.safetensors"),))
    assert list(adapters.loaded.values()) and not list((tmp_path / "cache").glob("*"))
