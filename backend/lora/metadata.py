"""What a LoRA file says about itself, in its safetensors header (strings only): the keys tools read, the SAI
model spec's `modelspec.*` (ComfyUI, SwarmUI, Civitai) and kohya's `ss_*` (A1111/Forge, Civitai). A trained file's
are written here; an uploaded or trained file's own are kept in the product's stored file, within a budget."""

import json
import logging
import struct
from datetime import datetime, timezone
from pathlib import Path

from backend.lora.safetensors_file import read_safetensors_header

log = logging.getLogger("showroom.lora")
OWN_PREFIXES = ("ss_", "modelspec.")  # the header keys a stored product's file keeps of the file it came from
# A header may hold megabytes: kohya's ss_tag_frequency counts every caption word of a large dataset, and
# modelspec.thumbnail embeds an image. Titles, licences and training settings take a few KB.
MAX_OWN_BYTES = 64 * 1024


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
        # the product's pixels weigh more than the rest (--background-weight under 1)
        "ss_masked_loss": str(trainer.masked_photos > 0 and args.background_weight < 1),
        "ss_mixed_precision": precision,
        "ss_optimizer": "torch.optim.AdamW(weight_decay=0.01)",
        "ss_lr_scheduler": "constant",
        # A1111 lists a LoRA's training words from this: every view is captioned with the trigger
        "ss_tag_frequency": json.dumps({"product": {args.trigger: photos}}),
    }
    if trained_text:
        about["ss_text_encoder_lr"] = str(args.text_encoder_lr or args.lr)
    return about


def own_metadata(metadata: dict[str, str], limit: int = MAX_OWN_BYTES) -> dict[str, str]:
    """What a LoRA file says about itself that tools show (its `ss_*` and `modelspec.*` keys), at most `limit` bytes
    of them as written in a header: past that the largest values are dropped first, and the log names them. Every
    other key is left out (the loader writes its own)."""
    own = {key: value for key, value in metadata.items() if key.startswith(OWN_PREFIXES)}
    sizes = {key: len(json.dumps(key)) + len(json.dumps(value)) + 2 for key, value in own.items()}  # "k":"v",
    total, dropped = sum(sizes.values()), []
    for key in sorted(own, key=lambda k: (sizes[k], k), reverse=True):
        if total <= limit:
            break
        total -= sizes[key]
        del own[key]
        dropped.append(f"{key} ({sizes[key]} bytes)")
    if dropped:
        log.warning("LoRA metadata: %s left out, to keep at most %d bytes of the file's own ss_*/modelspec.* keys",
                    ", ".join(dropped), limit)
    return own


def with_metadata(lora: bytes, about: dict[str, str]) -> bytes:
    """The safetensors file `lora` with `about` added to its header's metadata, its own keys winning; the tensors'
    bytes are copied as they are, never decoded (an upload may be 1 GB)."""
    if not about:
        return lora
    header, metadata, body_start = read_safetensors_header(lora)
    encoded = json.dumps({"__metadata__": about | metadata} | header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the tensors start 8-byte aligned, as safetensors' own writer keeps them
    return b"".join((struct.pack("<Q", len(encoded)), encoded, memoryview(lora)[body_start:]))
