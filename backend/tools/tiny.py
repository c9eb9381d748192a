"""Write a tiny Stable Diffusion pipeline with random weights (and a tiny background remover), for offline smoke
runs and tests.

    python -m backend.tools.tiny ./data/tiny-sd

The folder is in diffusers layout, so the backend loads it through the same `from_pretrained`
code path as a real model (`MODEL_ID=./data/tiny-sd`). Its native size is 64x64 and it draws
noise, quickly: the point is to exercise the whole system, not to make pictures.
"""

import argparse
import json
from pathlib import Path

SEED = 0
SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")
SEGMENTER_SIZE = 320  # rembg's u2net_custom session resizes every photo to 320×320
# rembg feeds (pixel / brightest pixel - ImageNet mean) / ImageNet std per channel. The mean of those
# three values is about 2.44 for white, 1.48 for a light grey (200) and -1.99 for black: the edge sits
# between light grey and white, steep enough that a white background scores ~0 and a product ~1.
EDGE, STEEPNESS = 1.9, 8.0


def _write_tokenizer(folder: Path) -> None:
    """A byte-level CLIP tokenizer with no merges: every character is a token."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = [chr(c) for c in range(256)]
    vocab = {tok: i for i, tok in enumerate(chars + [c + "</w>" for c in chars] + list(SPECIAL_TOKENS))}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)
    tokenizer.save_pretrained(folder)


def build_tiny_pipeline(output: Path) -> Path:
    """Build the real diffusers classes at toy size with a fixed seed and save them to `output`."""
    import torch
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    output = Path(output)
    _write_tokenizer(output / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(output / "tokenizer")

    torch.manual_seed(SEED)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16,
        norm_num_groups=4,
        attention_head_dim=2,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=64,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.eos_token_id,
            hidden_size=16,
            intermediate_size=32,
            num_attention_heads=2,
            num_hidden_layers=2,
            vocab_size=len(tokenizer),
            max_position_embeddings=77,
            projection_dim=16,
        )
    )
    scheduler = DPMSolverMultistepScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000, steps_offset=1
    )
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(output, safe_serialization=True)
    return output


def build_tiny_taesd(output: Path) -> Path:
    """A tiny random AutoencoderTiny that fits the tiny pipeline (4 latent channels, 2x up), for TAESD_ID."""
    import torch
    from diffusers import AutoencoderTiny

    torch.manual_seed(SEED)
    AutoencoderTiny(encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8), num_encoder_blocks=(1, 1),
                    num_decoder_blocks=(1, 1), latent_channels=4).save_pretrained(output, safe_serialization=True)
    return Path(output)


def random_lora(model_dir: Path, seed: int, rank: int = 4, scale: float = 3.0) -> bytes:
    """A UNet LoRA for the model in `model_dir` (its attention projections), in diffusers layout, with random
    weights times `scale`, so that it visibly changes even a tiny model's pictures. Tests and gpu-check use it."""
    import tempfile

    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet", use_safetensors=True)
    torch.manual_seed(seed)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=False,
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_" in name:
                p.mul_(scale)
    with tempfile.TemporaryDirectory() as tmp:
        StableDiffusionPipeline.save_lora_weights(tmp, unet_lora_layers=get_peft_model_state_dict(unet),
                                                  safe_serialization=True)
        return (Path(tmp) / "pytorch_lora_weights.safetensors").read_bytes()


def build_tiny_segmenter(path: Path) -> Path:
    """A tiny "not white" segmentation model in U²-Net's ONNX layout, so rembg's custom session runs offline
    (BG_REMOVAL_MODEL=<path>): a 1×1 convolution (minus the channel mean) and a sigmoid, written to `path`."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.full((1, 3, 1, 1), -STEEPNESS / 3, dtype=np.float32)
    bias = np.array([STEEPNESS * EDGE], dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input.1", "weight", "bias"], ["logits"]),
         helper.make_node("Sigmoid", ["logits"], ["d0"])],
        "tiny_segmenter",
        # U²-Net's names; rembg reads the input's name from the model and takes the first output's channel 0.
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, SEGMENTER_SIZE, SEGMENTER_SIZE])],
        [helper.make_tensor_value_info("d0", TensorProto.FLOAT, [1, 1, SEGMENTER_SIZE, SEGMENTER_SIZE])],
        [numpy_helper.from_array(weight, "weight"), numpy_helper.from_array(bias, "bias")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what onnxruntime releases from 1.14 on all read
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", type=Path, help="folder to write the pipeline to")
    parser.add_argument("--taesd", type=Path, help="also write a tiny TAESD that fits it to this folder")
    args = parser.parse_args()
    path = build_tiny_pipeline(args.output)
    print(f"wrote a tiny random pipeline to {path}; run with MODEL_ID={path.resolve()}")
    if args.taesd:
        print(f"wrote a tiny TAESD to {build_tiny_taesd(args.taesd)}; add TAESD_ID={args.taesd.resolve()}")


if __name__ == "__main__":
    main()
