"""Prompts past CLIP's 77 tokens are encoded window by window, not cut: the end of a long prompt changes the
picture. On the tiny models every character is a token, so 100 characters make two windows."""

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from backend.gpu.long_prompts import prompt_embeddings, window_count
from backend.gpu.messages import Task
from backend.gpu.pipeline import Generator
from backend.storage import LocalStorage
from tests.backend import wild_loras

FILLER = "a glass perfume bottle standing on wet black stone, soft light, " * 2  # 128 characters: two windows


@pytest.fixture(scope="module")
def tiny_sdxl(tiny_model, tmp_path_factory) -> Path:
    return wild_loras.build_tiny_sdxl(tmp_path_factory.mktemp("tiny-sdxl"), tiny_model / "tokenizer")


def task(prompt: str, negative: str = "") -> Task:
    return Task(task_id=1, job_id="l" * 32, indices=(0,), seeds=(3,), keys=("jobs/" + "l" * 32 + "/0.png",),
                prompt=prompt, negative_prompt=negative, steps=2, guidance_scale=7.5, width=64, height=64,
                strength=1.0)


def pixels(gen: Generator, prompt: str, negative: str = "") -> np.ndarray:
    (image,) = gen.generate(task(prompt, negative), lambda: False, lambda step, total: None)
    return np.asarray(image).astype(int)


@pytest.mark.parametrize("model", ["tiny_model", "tiny_sdxl"])
def test_one_window_encodes_exactly_as_diffusers_does(model, request, tmp_path, torch_one_thread):
    gen = Generator(str(request.getfixturevalue(model)), "cpu", LocalStorage(tmp_path / "s"), tmp_path / "c")
    pipe = gen.t2i
    assert window_count(pipe, "a red bottle") == 1 and window_count(pipe, FILLER) == 2
    ours = prompt_embeddings(pipe, "a red bottle", "blurry", 2)
    with torch.inference_mode():
        theirs = pipe.encode_prompt(prompt="a red bottle", negative_prompt="blurry", device="cpu",
                                    num_images_per_prompt=2, do_classifier_free_guidance=True)
    names = ["prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds"]
    assert len(ours) == len(theirs) == (4 if model == "tiny_sdxl" else 2)
    for name, theirs_one in zip(names, theirs):
        assert ours[name].shape == theirs_one.shape, name
        assert torch.allclose(ours[name], theirs_one, atol=1e-5), name


@pytest.mark.parametrize("model", ["tiny_model", "tiny_sdxl"])
def test_the_end_of_a_long_prompt_changes_the_picture(model, request, tmp_path, torch_one_thread):
    gen = Generator(str(request.getfixturevalue(model)), "cpu", LocalStorage(tmp_path / "s"), tmp_path / "c")
    red, blue = pixels(gen, FILLER + "red label"), pixels(gen, FILLER + "blue label")
    assert np.abs(red - blue).max() > 0, "the words past the 77th token were dropped"
    assert np.array_equal(red, pixels(gen, FILLER + "red label")), "the same long prompt, the same picture"
    long_negative = pixels(gen, "a bottle", negative=FILLER + "blurry")
    assert long_negative.shape == (64, 64, 3)


def test_long_prompt_embeddings_lay_windows_end_to_end(tiny_model, tmp_path, torch_one_thread):
    gen = Generator(str(tiny_model), "cpu", LocalStorage(tmp_path / "s"), tmp_path / "c")
    tokens = len(gen.t2i.tokenizer(FILLER * 2, add_special_tokens=False).input_ids)
    assert 150 < tokens < 225
    kwargs = prompt_embeddings(gen.t2i, FILLER * 2, "", 3)
    assert kwargs["prompt_embeds"].shape[:2] == (3, 77 * 3), f"{tokens} tokens: two windows of 75, and one more"
    assert kwargs["negative_prompt_embeds"].shape == kwargs["prompt_embeds"].shape, "the negative padded to match"
    cut_by_diffusers = gen.t2i.encode_prompt(prompt=FILLER * 2, device="cpu", num_images_per_prompt=1,
                                             do_classifier_free_guidance=False)[0]  # its first 75 tokens only
    assert torch.allclose(kwargs["prompt_embeds"][0, :77], cut_by_diffusers[0], atol=1e-6)


@pytest.mark.parametrize("model", ["tiny_model", "tiny_sdxl"])
def test_a_token_of_several_vectors_is_expanded_as_diffusers_does(model, request, tmp_path, torch_one_thread):
    """A product's token embedding of 2 vectors takes `<s1>` and `<s1>_1` (backend/lora/loading.py); diffusers'
    encode_prompt writes `<s1>` as both, so a long prompt must too, or it loses all but the first vector."""
    gen = Generator(str(request.getfixturevalue(model)), "cpu", LocalStorage(tmp_path / "s"), tmp_path / "c")
    pipe = gen.t2i
    pipe.tokenizer.add_tokens(["<s1>", "<s1>_1"])
    pipe.text_encoder.resize_token_embeddings(len(pipe.tokenizer), mean_resizing=False)
    table = pipe.text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        table[-2:] = torch.randn(2, table.shape[1], generator=torch.Generator().manual_seed(0))
    ours = prompt_embeddings(pipe, "a <s1> bottle", "", 1)
    with torch.inference_mode():
        theirs = pipe.encode_prompt(prompt="a <s1> bottle", negative_prompt="", device="cpu",
                                    num_images_per_prompt=1, do_classifier_free_guidance=True)
    assert torch.allclose(ours["prompt_embeds"], theirs[0], atol=1e-5), "one window: as encode_prompt"
    before = prompt_embeddings(pipe, FILLER + "<s1>", "", 1)["prompt_embeds"]
    with torch.no_grad():
        table[-1] = 0  # the second vector, <s1>_1
    after = prompt_embeddings(pipe, FILLER + "<s1>", "", 1)["prompt_embeds"]
    assert not torch.allclose(before, after), "a long prompt's <s1> uses its second vector too"


@pytest.mark.parametrize("model", ["tiny_model", "tiny_sdxl"])
def test_a_long_prompt_logs_no_false_warning_about_its_length(model, request, tmp_path, torch_one_thread, caplog,
                                                              monkeypatch):
    """Nothing is cut: the tokens are taken whole, then encoded window by window. The tokenizer's "Token indices
    sequence length is longer than the specified maximum ... will result in indexing errors" would be false."""
    from transformers.utils import logging as transformers_logging

    # it goes to transformers' own handler only; get_logger() first sets that up, which turns propagation off
    monkeypatch.setattr(transformers_logging.get_logger(), "propagate", True)
    gen = Generator(str(request.getfixturevalue(model)), "cpu", LocalStorage(tmp_path / "s"), tmp_path / "c")
    with caplog.at_level(logging.WARNING):
        prompt_embeddings(gen.t2i, FILLER + "red label", FILLER + "blurry", 1)
    assert [r.getMessage() for r in caplog.records if "sequence length" in r.getMessage()] == []
