"""What a trained LoRA file says about itself, in its safetensors header (strings only): the keys tools read,
the SAI model spec's `modelspec.*` (ComfyUI, SwarmUI, Civitai) and kohya's `ss_*` (A1111/Forge, Civitai)."""

import json
from datetime import datetime, timezone
from pathlib import Path


def base_model_name(model: str) -> str:
    """The base model as a LoRA file may name it: a hub id as it is; a local folder by its own name (a Hugging Face
    cache folder by its repo id), never by the path it has on the training machine."""
    path = Path(model)
    if not path.exists():
        return model
    path = path.resolve()
    for part in reversed(path.parts):
        if part.startswith("models--"):  # ~/.cache/huggingface/hub/models--org--name/snapshots/<commit>
            return part.removeprefix("models--").replace("--", "/", 1)
    return path.name


def family(trainer) -> tuple[str, str]:
    """The base model's kind as the two metadata conventions name it: (SAI model spec architecture, kohya's
    ss_base_model_version). SD 2.x is told from SD 1.x by its 1024-wide cross-attention, 768-v by v-prediction."""
    if trainer.xl:
        return "stable-diffusion-xl-v1-base", "sdxl_base_v1-0"
    if trainer.unet.config.cross_attention_dim == 1024:
        v = trainer.scheduler.config.prediction_type == "v_prediction"
        return ("stable-diffusion-v2-768-v" if v else "stable-diffusion-v2-512"), "sd_v2"
    return "stable-diffusion-v1", "sd_v1"


def lora_metadata(trainer, step: int, photos: int) -> dict[str, str]:
    """What the LoRA file says about itself (safetensors metadata: strings only), in the keys tools read: the
    SAI model spec's `modelspec.*` (ComfyUI, SwarmUI, Civitai) and kohya's `ss_*` (A1111/Forge, Civitai).
    Nothing from the training machine goes in (no paths, no captions, no keys): the only words a person chose
    are the trigger and the title (`--name`, else the output file's name)."""
    import torch

    args, trained_text = trainer.args, bool(trainer.trained_text)
    architecture, base_version = family(trainer)
    title = getattr(args, "name", None) or Path(args.output).stem
    size = trainer.resolution
    precision = {None: "no", torch.float16: "fp16", torch.bfloat16: "bf16"}[trainer.autocast_dtype]
    about = {
        "format": "pt",  # what diffusers writes: safetensors' own tag for torch tensors
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": f"{architecture}/lora",
        "modelspec.implementation": "diffusers",  # the tensor names: diffusers' layout
        "modelspec.title": title,
        "modelspec.trigger_phrase": args.trigger,
        "modelspec.date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "modelspec.resolution": f"{size}x{size}",
        "modelspec.prediction_type": "v" if trainer.scheduler.config.prediction_type == "v_prediction" else "epsilon",
        "ss_output_name": title,
        "ss_sd_model_name": base_model_name(args.model),
        "ss_base_model_version": base_version,
        "ss_v2": str(base_version == "sd_v2"),
        "ss_network_dim": str(args.rank),
        "ss_network_alpha": str(args.rank),  # lora_alpha = rank: the file has no alphas, loaders take the rank
        "ss_network_train_unet_only": str(not trained_text),
        "ss_steps": str(step),
        "ss_max_train_steps": str(args.steps),
        "ss_resolution": f"({size}, {size})",
        "ss_learning_rate": str(args.lr),
        "ss_unet_lr": str(args.lr),
        "ss_num_train_images": str(photos),
        "ss_batch_size_per_device": str(args.batch_size),
        "ss_gradient_accumulation_steps": str(args.grad_accum),
        "ss_seed": str(args.seed),
        "ss_flip_aug": str(bool(args.flip)),
        "ss_mixed_precision": precision,
        "ss_optimizer": "torch.optim.AdamW(weight_decay=0.01)",
        "ss_lr_scheduler": "constant",
        # A1111 lists a LoRA's training words from this: every view is captioned with the trigger
        "ss_tag_frequency": json.dumps({"product": {args.trigger: photos}}),
    }
    if trained_text:
        about["ss_text_encoder_lr"] = str(args.text_encoder_lr or args.lr)
    return about
