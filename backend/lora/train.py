"""Train a product LoRA on Stable Diffusion (1.x/2.x or SDXL) from a folder of photos, and optionally register it.

    python -m backend.lora.train --images photos/ --trigger "sks bottle" --output out/bottle.safetensors \\
        [--video turn.mp4] [--steps 1000] [--rank 16] [--lr 1e-4] [--register --name bottle --category drinks]

The recipe is diffusers' LoRA fine-tuning: photos are encoded by the VAE, noised at a random timestep with the
noise scheduler, and the UNet (with peft LoRA layers on to_q, to_k, to_v and to_out.0; optionally the text
encoder too, or SDXL's two) learns to predict the noise (or v) under MSE. On SDXL the UNet is also told each
photo's size and where its crop starts (backend/lora/trainer.py says how); it trains at 1024 px by default,
SD 1.x/2.x at 512. Random crops and a little colour jitter (and mirroring, with `--flip`) give it more views
of the product.
Checkpoints land in `<output stem>-checkpoints/` every `--checkpoint-every` steps;
`--resume` continues from the newest one. The output is a diffusers-layout `.safetensors` LoRA (alpha = rank),
which `POST /v1/products` stores as it is; its metadata says what it is (trigger, base model, rank, steps...) in
the keys A1111, ComfyUI and Civitai read. See docs/TRAINING.md for what makes a good product LoRA.
"""

import argparse
import json
import logging
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from PIL import Image, ImageOps
from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from backend.config import DEFAULT_MODEL_ID
from backend.images import to_pixels
from backend.lora.trainer import TEXT_ENCODER_CHOICES, Trainer
from backend.lora.views import Photo, with_mask

log = logging.getLogger("showroom.train")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
ANIMATED_SUFFIXES = {".gif", ".webp", ".png"}


class TrainSettings(BaseSettings):
    """The trainer is its own command; it reads the contract's names for the model and the backend."""
    model_config = SettingsConfigDict(extra="ignore", case_sensitive=False)
    model_id: str = DEFAULT_MODEL_ID
    api_key: SecretStr | None = None
    backend_url: str = "http://localhost:8000"
    bg_removal_model: str | None = None  # --find-product's default, as place mode's remover is named


@dataclass
class TrainResult:
    output: Path
    start_step: int
    end_step: int
    probe_loss_before: float
    probe_loss_after: float
    losses: list[float] = field(default_factory=list)
    photos: int = 0
    found: int = 0  # photos whose product was found (its own transparency, or the background remover)


# ----- data -----

def spaced(total: int, count: int) -> list[int]:
    """`count` indices spread evenly over `range(total)`, from the first; all of them when there are no more."""
    if total <= count:
        return list(range(total))
    return [i * total // count for i in range(count)]


def video_frames(path: Path, count: int) -> list[Image.Image]:
    """`count` frames evenly spaced over an animated GIF/WebP/PNG (Pillow) or a video (PyAV); only those are kept."""
    if path.suffix.lower() in ANIMATED_SUFFIXES:
        with Image.open(path) as img:
            frames = []
            for index in spaced(getattr(img, "n_frames", 1), count):
                img.seek(index)
                frames.append(to_pixels(img))  # as photos are read: a clip with a P3 profile in sRGB
    else:
        try:
            import av
        except ImportError:
            raise SystemExit(f"reading {path.suffix} video needs PyAV (pip install av), which is not installed; or "
                             f"extract frames yourself (ffmpeg -i {path.name} -vf fps=2 frames/%03d.png) and add "
                             "them to --images") from None
        try:
            with av.open(str(path)) as container:  # count the frames without decoding them
                total = sum(1 for packet in container.demux(video=0) if packet.size)
            wanted = set(spaced(total, count))
            with av.open(str(path)) as container:
                frames = [f.to_image().convert("RGB") for i, f in enumerate(container.decode(video=0)) if i in wanted]
        except av.FFmpegError as e:
            raise SystemExit(f"could not read the video {path}: {e}") from None
    if not frames:
        raise SystemExit(f"no frames could be read from {path}")
    return frames


def with_trigger(words: str, trigger: str) -> str:
    """A caption that does not name the trigger gets it put in front: every view teaches the trigger words."""
    return words if trigger in words else f"{trigger}, {words}"


def load_photos(folder: Path, video: Path | None, video_count: int, caption: str, trigger: str) -> list[Photo]:
    """Every photo in `folder` (a `name.txt` beside it overrides the caption) and frames of `video`, each with the
    box of its product where its own transparency shows it."""
    if not folder.is_dir():
        raise SystemExit(f"--images {folder} is not a folder")
    photos = []
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        with Image.open(path) as img:
            image = to_pixels(ImageOps.exif_transpose(img))  # as uploads; a transparent one is laid on a ground
        text = path.with_suffix(".txt")
        words = text.read_text().strip() if text.is_file() else caption.format(trigger=trigger)
        photos.append(with_mask(Photo(image, with_trigger(words, trigger), path.name), _own_mask(image)))
    if video:
        words = with_trigger(caption.format(trigger=trigger), trigger)
        photos += [with_mask(Photo(frame, words, f"{video.name}#{n}"), _own_mask(frame))
                   for n, frame in enumerate(video_frames(video, video_count))]
    if not photos:
        raise SystemExit(f"no photos ({', '.join(sorted(IMAGE_SUFFIXES))}) found in {folder}")
    return photos


def _own_mask(image: Image.Image) -> Image.Image | None:
    """Where a photo with transparency (a packshot) is opaque: its product. None for other photos."""
    from backend.place.cutout import NothingFound, product_mask

    if image.mode != "RGBA":
        return None
    try:
        return product_mask(image, None)
    except NothingFound:
        return None


def find_products(photos: list[Photo], model: str, between: Callable[[], None] | None = None,
                  budget_s: float | None = None) -> dict[str, Image.Image | None]:
    """The product's mask in each photo without one (no transparency), by place mode's background remover `model`
    (BG_REMOVAL_MODEL: a rembg name or an .onnx file), keyed by the photo's name; None where it finds none, and
    for the photos left once `budget_s` seconds are spent. `between` runs before each photo (progress, a stop).
    The remover is never downloaded here: one that is not on this machine finds nothing (the views then hold
    each photo's centre, and the loss weighs the whole picture alike)."""
    from backend.place.cutout import BackgroundRemover, NothingFound, product_mask

    remover = BackgroundRemover(model)
    if not remover.on_disk():
        log.warning("the background remover %s is not on this machine: each view holds its photo's centre", model)
        return {}
    started, found, out_of_time = time.perf_counter(), {}, False
    for photo in (p for p in photos if p.mask is None):
        if between is not None:
            between()
        out_of_time = out_of_time or (budget_s is not None and time.perf_counter() - started > budget_s)
        try:
            found[photo.name] = None if out_of_time else product_mask(photo.image, remover)
        except NothingFound:
            found[photo.name] = None
    log.info("found the product in %d of %d photos in %.1f s (%s)%s", sum(m is not None for m in found.values()),
             len(found), time.perf_counter() - started, model,
             f"; the search stopped at its budget of {budget_s:.0f} s" if out_of_time else "")
    return found


def with_masks(photos: list[Photo], masks: dict[str, Image.Image | None]) -> list[Photo]:
    """The photos with the masks found for them (a photo's own, from its transparency, stays)."""
    return [p if p.mask is not None else with_mask(p, masks.get(p.name)) for p in photos]


# ----- checkpoints: safetensors and JSON, never a pickle -----

def checkpoint_root(output: Path) -> Path:
    return output.with_name(f"{output.stem}-checkpoints")


def save_checkpoint(trainer: Trainer, output: Path, step: int, keep: int, probe_loss_before: float,
                    photos: int) -> Path:
    from safetensors.torch import save_file

    root = checkpoint_root(output)
    folder, tmp = root / f"step-{step:06d}", root / f".step-{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({n: p.detach().float().cpu().contiguous() for n, p in trainer.named_params.items()},
              str(tmp / "lora.safetensors"), metadata=trainer.metadata(step, photos))  # says what it is, as the LoRA
    state = trainer.optimizer.state_dict()
    save_file({f"{i}.{k}": v.detach().cpu().contiguous().reshape(-1) if v.ndim == 0 else v.detach().cpu().contiguous()
               for i, s in state["state"].items() for k, v in s.items()}, str(tmp / "optimizer.safetensors"))
    groups = [{k: v for k, v in g.items()} for g in state["param_groups"]]
    (tmp / "state.json").write_text(json.dumps({
        "step": step, "rank": trainer.args.rank, "param_groups": groups, "model": "sdxl" if trainer.xl else "sd",
        "train_text_encoder": bool(trainer.trained_text), "text_encoders": list(trainer.trained_text),
        "scaler": trainer.scaler.state_dict() if trainer.scaler else None,  # fp16's loss scale
        "probe_loss_before": probe_loss_before}, indent=1))  # a resumed run reports the loss before step 1
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    for old in sorted(root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return folder


def load_checkpoint(trainer: Trainer, output: Path) -> tuple[int, float | None]:
    """Restore the newest checkpoint; returns its step (0 when there is none) and the probe loss before step 1
    (None when the checkpoint does not say)."""
    import torch
    from safetensors.torch import load_file

    found = sorted(p for p in checkpoint_root(output).glob("step-*") if (p / "state.json").is_file())
    if not found:
        log.warning("--resume: no checkpoint in %s; starting from step 0", checkpoint_root(output))
        return 0, None
    folder = found[-1]
    meta = json.loads((folder / "state.json").read_text())
    # checkpoints written before SDXL training say only whether the (one) text encoder was trained
    text = meta.get("text_encoders", list(trainer.encoders) if meta["train_text_encoder"] else [])
    if (meta["rank"], text) != (trainer.args.rank, list(trainer.trained_text)):
        raise SystemExit(f"checkpoint {folder} was trained with rank {meta['rank']} and LoRAs on the text encoders "
                         f"{text or 'none'}: pass the same --rank and --train-text-encoder to --resume it")
    weights = load_file(str(folder / "lora.safetensors"))
    if weights.keys() != trainer.named_params.keys():
        raise SystemExit(f"checkpoint {folder} was trained on another model ({meta.get('model', 'sd')}, "
                         f"{len(weights)} LoRA tensors; {trainer.args.model} has {len(trainer.named_params)}): "
                         "resume it with the model it started on, or start again without --resume")
    with torch.no_grad():
        for name, p in trainer.named_params.items():
            p.copy_(weights[name])
    flat = load_file(str(folder / "optimizer.safetensors"))
    state: dict[int, dict] = {}
    for key, value in flat.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value.reshape(()) if name == "step" else value
    trainer.optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    if trainer.scaler and meta.get("scaler"):  # else it starts at 65536 again and skips the steps that overflow
        trainer.scaler.load_state_dict(meta["scaler"])
    print(f"resumed from {folder} at step {meta['step']}", file=sys.stderr)
    return int(meta["step"]), meta.get("probe_loss_before")


# ----- the run -----

def train(args: argparse.Namespace, on_step: Callable[[int, int, float], None] | None = None,
          on_checkpoint: Callable[[Path, int], None] | None = None,
          locate: Callable[[list[Photo]], dict[str, Image.Image | None]] | None = None) -> TrainResult:
    """Train (or resume) to `args.steps` optimizer steps and write the LoRA to `args.output`. `on_step(step,
    steps, smoothed loss)` follows each step; `on_checkpoint(folder, step)` each checkpoint written; `locate`
    finds the product's mask in photos (default: with `--find-product`'s remover, when given)."""
    import torch
    from tqdm.auto import tqdm

    torch.manual_seed(args.seed)  # the LoRA's initial weights
    items = load_photos(args.images, args.video, args.video_frames, args.caption, args.trigger)
    if locate is None and args.find_product:
        locate = partial(find_products, model=args.find_product)
    if locate is not None:
        items = with_masks(items, locate(items))
    trainer = Trainer(args)
    trainer.masked_photos = sum(p.mask is not None for p in items)
    start, before = load_checkpoint(trainer, args.output) if args.resume else (0, None)
    print(f"training {'an SDXL' if trainer.xl else 'an SD'} LoRA at {trainer.resolution} px on {len(items)} photos "
          f"(the product found in {trainer.masked_photos}) from step {start} to {args.steps} on {trainer.device}",
          file=sys.stderr)
    if before is None:
        before = trainer.probe_loss(items)
    losses, smooth = [], None
    bar = tqdm(total=args.steps, initial=start, desc="training", unit="step", disable=args.quiet)
    for step in range(start + 1, args.steps + 1):
        loss = trainer.step(items, step)
        if not torch.isfinite(torch.tensor(loss)):
            raise SystemExit(f"the loss became {loss} at step {step}: lower --lr or use --mixed-precision no")
        losses.append(loss)
        smooth = loss if smooth is None else 0.9 * smooth + 0.1 * loss
        bar.update(1)
        bar.set_postfix(loss=f"{smooth:.4f}")
        if on_step:
            on_step(step, args.steps, smooth)
        if args.checkpoint_every and step % args.checkpoint_every == 0 and step < args.steps:
            folder = save_checkpoint(trainer, args.output, step, args.keep_checkpoints, before, len(items))
            if on_checkpoint:
                on_checkpoint(folder, step)
    bar.close()
    if args.checkpoint_every and args.steps > start:
        save_checkpoint(trainer, args.output, args.steps, args.keep_checkpoints, before, len(items))
    after = trainer.probe_loss(items)
    trainer.save_lora(args.output, trainer.metadata(args.steps, len(items)))
    print(f"wrote {args.output}; loss on the photos (fixed noise): {before:.4f} -> {after:.4f}", file=sys.stderr)
    return TrainResult(args.output, start, args.steps, before, after, losses, len(items), trainer.masked_photos)


def register(args: argparse.Namespace, settings: TrainSettings) -> dict:
    """Upload the LoRA as a product through the backend's API (`POST /v1/products`)."""
    import requests

    url = (args.backend_url or settings.backend_url).rstrip("/")
    headers = {"Authorization": f"Bearer {settings.api_key.get_secret_value()}"} if settings.api_key else {}
    data = {"name": args.name or args.output.stem, "trigger": args.trigger, "weight": str(args.weight)}
    if args.category:
        data["category"] = args.category
    with open(args.output, "rb") as f:
        files = {"file": (args.output.name, f, "application/octet-stream")}
        try:
            r = requests.post(f"{url}/v1/products", data=data, files=files, headers=headers, timeout=600)
        except requests.RequestException as e:
            raise SystemExit(f"could not reach the backend at {url} ({type(e).__name__}); the LoRA is saved at "
                             f"{args.output}: upload it later with --register-only") from None
    if r.status_code != 201:
        try:
            detail = r.json().get("detail")
        except ValueError:
            detail = r.text[:300]
        raise SystemExit(f"the backend refused the LoRA ({r.status_code}): {detail}")
    return r.json()


def parse_args(argv: list[str] | None = None, settings: TrainSettings | None = None) -> argparse.Namespace:
    settings = settings or TrainSettings()
    p = argparse.ArgumentParser(prog="python -m backend.lora.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--images", type=Path, help="folder of product photos (name.txt = its caption); required to train")
    g.add_argument("--video", type=Path, help="optional video or animated GIF/WebP of the product to take frames from")
    g.add_argument("--video-frames", type=int, default=24, help="frames taken from --video, evenly spaced")
    g.add_argument("--trigger", required=True, help="the words that call up the product, e.g. 'sks bottle'")
    g.add_argument("--caption", default="a photo of {trigger}", help="caption of photos without a .txt")
    g.add_argument("--resolution", type=int,
                   help="training size in pixels; default: 1024 on SDXL, 512 on SD 1.x/2.x")
    g.add_argument("--crop", action=argparse.BooleanOptionalAction, default=True, help="random crops")
    # off by default, as the app trains: most products carry a label, and a mirrored one teaches the wrong label.
    # --no-flip (what the default was turned off with) is still taken, so older command lines run as they did.
    g.add_argument("--flip", action=argparse.BooleanOptionalAction, default=False,
                   help="mirror half the views at random (default: off; only for products without text or logos)")
    g.add_argument("--color-jitter", type=float, default=0.05, help="brightness/contrast/colour jitter, 0 = off")
    g.add_argument("--background-weight", type=float, default=0.2,
                   help="how much the loss counts pixels that are not the product, where its mask is known (a "
                        "packshot's transparency, or --find-product): 1 = as much as the product, 0 = not at all")
    g.add_argument("--find-product", metavar="REMOVER", default=settings.bg_removal_model,
                   help="find the product in each photo with this background remover (a rembg model name, e.g. "
                        "birefnet-general, or an .onnx file; not downloaded) so every view holds all of it; default: "
                        "BG_REMOVAL_MODEL, else only photos with transparency show where it is (the others: their "
                        "centre)")
    g = p.add_argument_group("training")
    g.add_argument("--model", default=settings.model_id, help="diffusers model id or folder (default: MODEL_ID)")
    g.add_argument("--output", type=Path, required=True, help="the LoRA to write, e.g. out/bottle.safetensors")
    g.add_argument("--steps", type=int, default=1000, help="optimizer steps")
    g.add_argument("--rank", type=int, default=16)
    g.add_argument("--lr", type=float, default=1e-4)
    g.add_argument("--train-text-encoder", nargs="?", const="all", choices=list(TEXT_ENCODER_CHOICES),
                   metavar="{all,1,2}", help="also train LoRAs on the text encoder(s): alone or 'all' = every one "
                   "the model has (both of SDXL's); '1' or '2' = only SDXL's first or second")
    g.add_argument("--text-encoder-lr", type=float, help="default: --lr")
    g.add_argument("--batch-size", type=int, default=1)
    g.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation: batches per optimizer step")
    g.add_argument("--mixed-precision", choices=["auto", "no", "fp16", "bf16"], default="auto",
                   help="auto = bf16 (or fp16) on CUDA, none elsewhere")
    g.add_argument("--gradient-checkpointing", choices=["auto", "on", "off"], default="auto", help="auto = on CUDA")
    g.add_argument("--device", default="auto", help="auto, cuda, cuda:1, mps or cpu")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--checkpoint-every", type=int, default=250, help="0 = no checkpoints")
    g.add_argument("--keep-checkpoints", type=int, default=2)
    g.add_argument("--resume", action="store_true", help="continue from the newest checkpoint of --output")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g = p.add_argument_group("registering the product")
    g.add_argument("--register", action="store_true", help="upload the LoRA to the backend as a product")
    g.add_argument("--register-only", action="store_true", help="upload an existing --output without training")
    g.add_argument("--name", help="product name, also the LoRA's title in its metadata (default: the output "
                   "file's stem)")
    g.add_argument("--category")
    g.add_argument("--weight", type=float, default=1.0)
    g.add_argument("--backend-url", help="default: BACKEND_URL or http://localhost:8000")
    args = p.parse_args(argv)
    if args.images is None and not args.register_only:
        p.error("--images is required to train (only --register-only uploads an existing --output)")
    for name in ("steps", "rank", "batch_size", "grad_accum", "resolution", "video_frames", "keep_checkpoints"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if not 0 <= args.background_weight <= 1:
        p.error(f"--background-weight must be between 0 and 1, got {args.background_weight}")
    if args.resolution is not None and args.resolution % 8:
        p.error(f"--resolution must be a multiple of 8, got {args.resolution}")
    if args.output.suffix != ".safetensors":
        p.error(f"--output must end in .safetensors, got {args.output}")
    return args


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    settings = TrainSettings()
    args = parse_args(argv, settings)
    if not args.register_only:
        train(args)
    if args.register or args.register_only:
        product = register(args, settings)
        print(f"registered product {product['name']!r} (trigger {product['trigger']!r})")


if __name__ == "__main__":
    main()
