"""COMPILE's UNet on the worker's Generator: compiled in place, so diffusers' LoRA calls still reach it.

torch.compile(unet) returned a wrapper that diffusers' set_adapters and disable_lora skip without a word:
a product job failed ("not in the list of present adapters") and the next job without a LoRA was drawn
with the last product's. Here the UNet is compiled as COMPILE does it (with dynamo's eager backend: the
CPU has no inductor toolchain to spare, and which backend compiles does not change what diffusers sees),
and the same jobs must draw what the uncompiled UNet draws."""

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel

from backend.gpu.pipeline import compile_in_place
from tests.backend.test_lora_wild import PLAIN, TRIGGER, Worker
from tests.factories import make_lora

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_a_compiled_unet_takes_loras_on_and_off_as_the_plain_one_does(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", torch._dynamo.config.recompile_limit)  # restored after
    plain, compiled = Worker(tiny_model, tmp_path / "plain"), Worker(tiny_model, tmp_path / "compiled")
    compile_in_place(compiled.gen.t2i.unet, backend="eager")
    try:
        assert isinstance(compiled.gen.t2i.unet, UNet2DConditionModel), "a wrapper hides the UNet from diffusers"
        drawn = {}
        for name, w in (("plain", plain), ("compiled", compiled)):
            a = w.upload("mug-a", make_lora(tiny_model, seed=1))
            b = w.upload("mug-b", make_lora(tiny_model, seed=2))
            drawn[name] = [w.draw(PLAIN), w.draw(TRIGGER, a), w.draw(TRIGGER, a, b), w.draw(PLAIN),
                           w.draw(TRIGGER, b)]
        for n, (want, got) in enumerate(zip(drawn["plain"], drawn["compiled"])):
            assert np.abs(want - got).max() <= 1, f"job {n} differs once the UNet is compiled"
        without, with_a, _, without_again, _ = drawn["compiled"]
        assert np.abs(with_a - without).mean() > 2, "the product's LoRA did not reach the compiled UNet"
        np.testing.assert_array_equal(without_again, without, err_msg="a job without a LoRA kept the last one")
    finally:
        torch._dynamo.reset()
