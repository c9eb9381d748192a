"""The model side of backend.lora.train: Stable Diffusion 1.x/2.x or SDXL, frozen, with trainable LoRA layers.

What the UNet is conditioned on follows how each family was trained (and how diffusers' pipelines run it):
- SD 1.x/2.x: the text encoder's last hidden states.
- SDXL: both text encoders' penultimate hidden states side by side (768 + 1280 = 2048 wide), the second
  encoder's pooled, projected embedding, and six micro-conditioning "time ids": the photo's height and width,
  the top-left corner of the crop, and the target height and width. Each random crop passes its own corner,
  so what a crop cut off is put down to the crop rather than learnt as the product's look; generation asks
  for corner (0, 0), an uncropped product.
SDXL's VAE overflows in fp16 (its config says `force_upcast`): it encodes in fp32 under mixed precision.
The LoRA file says what it is in its safetensors metadata (backend.lora.metadata).
"""

import argparse
import hashlib
import random
from pathlib import Path

from PIL import Image

from backend.gpu.devices import has_fp16_weights, pick_device
from backend.lora.metadata import lora_metadata
from backend.lora.views import View, augment

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
TEXT_ENCODER_CHOICES = {"all": None, "1": "text_encoder", "2": "text_encoder_2"}  # --train-text-encoder [WHICH]
SD_RESOLUTION, XL_RESOLUTION = 512, 1024  # --resolution's default: the size each family was trained at
PROBE_SEED = 1234
MIN_PRODUCT_SHARE = 0.01  # of a view's pixels its mask must cover to weigh the loss


def _seed(*parts) -> int:
    """A stable 63-bit seed from the run's seed and the step: a resumed run draws what the straight run drew."""
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "little") >> 1


def product_weights(views: list[View], latent_size, background: float):
    """How much each latent pixel of each view counts in the loss, (batch, 1, h, w): 1 on the product and
    `background` off it, where a view knows its product's mask (averaged over the 8x8 pixels a latent pixel
    covers), 1 everywhere where it does not; each view's weights average 1, so the loss keeps its scale. None
    when no view has a mask (the plain mean). The product is what the trigger words must call up: a plain
    loss learns the photos' table and wall as much, and they come back in every scene."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    masks = [np.asarray(v.mask, dtype=np.float32) / 255 if v.mask is not None else None for v in views]
    # a view that holds (next to) none of its product, a pair's empty middle, counts every pixel alike: weighing
    # its ground alone would teach the trigger words nothing (and at --background-weight 0, divide by zero)
    masks = [m if m is not None and m.mean() >= MIN_PRODUCT_SHARE else None for m in masks]
    if all(m is None for m in masks):
        return None
    masks = [m if m is not None else np.ones(v.image.size[::-1], np.float32) for m, v in zip(masks, views)]
    found = F.interpolate(torch.from_numpy(np.stack(masks))[:, None], size=tuple(latent_size), mode="area")
    weights = background + (1 - background) * found
    return weights / weights.mean(dim=(1, 2, 3), keepdim=True)


def to_pixels(images: list[Image.Image]):
    import numpy as np
    import torch

    arr = np.stack([np.asarray(img, dtype=np.float32) / 127.5 - 1 for img in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def vae_dtype(xl: bool, vae_config, weight_dtype):
    """SDXL's VAE overflows in fp16 (NaN latents, then a NaN loss): where its config says so, it runs in fp32;
    one encode per step is a small share of a step. SD 1.x/2.x VAEs run at the weights' dtype."""
    import torch

    return torch.float32 if xl and getattr(vae_config, "force_upcast", False) else weight_dtype


def trained_text_encoders(choice: str | None, available: list[str], model: str) -> tuple[str, ...]:
    """The text encoders that get a LoRA for `--train-text-encoder [all|1|2]` (None: none of them)."""
    if choice is None:
        return ()
    if choice not in TEXT_ENCODER_CHOICES:
        raise SystemExit(f"--train-text-encoder takes {', '.join(TEXT_ENCODER_CHOICES)}, got {choice!r}")
    wanted = TEXT_ENCODER_CHOICES[choice]
    if wanted is None:
        return tuple(available)
    if wanted not in available:
        raise SystemExit(f"--train-text-encoder {choice}: {model} has no {wanted} (only SDXL has two text "
                         "encoders); use --train-text-encoder without a number")
    return (wanted,)


def mixed_precision(requested: str, device):
    """The autocast dtype for `--mixed-precision` on `device` (None: fp32 throughout). Auto is bf16 where the GPU
    computes in it (Ampere and later, and ROCm), else fp16: torch.cuda.is_bf16_supported() also says yes where bf16
    is only emulated (T4, V100, RTX 20xx), many times slower than fp16 there, and it asks the current GPU, not
    `device`."""
    import torch

    cuda = device.type == "cuda"
    if requested == "auto":
        native = cuda and (bool(torch.version.hip) or torch.cuda.get_device_capability(device)[0] >= 8)
        requested = ("bf16" if native else "fp16") if cuda else "no"
    if requested != "no" and not cuda:
        raise SystemExit(f"--mixed-precision {requested} needs a CUDA GPU; use --mixed-precision no here")
    return {"no": None, "fp16": torch.float16, "bf16": torch.bfloat16}[requested]


# ----- the model -----

class Trainer:
    """The frozen model with trainable LoRA layers, its optimizer, and the loss of one batch."""

    def __init__(self, args: argparse.Namespace):
        import torch

        self.args = args
        self.masked_photos = 0  # photos whose product's mask weighs the loss (set by backend.lora.train)
        self.device = torch.device(pick_device(args.device))
        cuda = self.device.type == "cuda"
        self.autocast_dtype = mixed_precision(args.mixed_precision, self.device)
        self._load(args.model, self.autocast_dtype or torch.float32)
        self.resolution = args.resolution or (XL_RESOLUTION if self.xl else SD_RESOLUTION)
        self.trained_text = trained_text_encoders(args.train_text_encoder, list(self.encoders), args.model)
        self._add_adapters(args.rank)
        if args.gradient_checkpointing == "on" or (args.gradient_checkpointing == "auto" and cuda):
            self.unet.enable_gradient_checkpointing()
            for name in self.trained_text:
                self.encoders[name][1].activation_checkpointing_enable()
        groups = [{"params": [p for n, p in self.named_params.items() if n.startswith("unet.")], "lr": args.lr}]
        if self.trained_text:
            groups.append({"params": [p for n, p in self.named_params.items() if not n.startswith("unet.")],
                           "lr": args.text_encoder_lr or args.lr})
        self.optimizer = torch.optim.AdamW(groups, weight_decay=1e-2)
        self.scaler = torch.amp.GradScaler("cuda") if self.autocast_dtype == torch.float16 else None

    def _load(self, model: str, weight_dtype) -> None:
        """The frozen parts on the device: UNet, text encoder(s) with their tokenizers, VAE, noise scheduler."""
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        self.unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet", **self._weights(model, "unet"))
        self.xl = self.unet.config.addition_embed_type == "text_time"
        self.tokenizer = self._part(model, "tokenizer", CLIPTokenizer)
        self.text_encoder = self._part(model, "text_encoder", CLIPTextModel)
        self.tokenizer_2 = self.text_encoder_2 = None
        self.encoders = {"text_encoder": (self.tokenizer, self.text_encoder)}  # component -> (tokenizer, model)
        if self.xl:
            self.tokenizer_2 = self._part(model, "tokenizer_2", CLIPTokenizer)
            self.text_encoder_2 = self._part(model, "text_encoder_2", CLIPTextModelWithProjection)
            self.encoders["text_encoder_2"] = (self.tokenizer_2, self.text_encoder_2)
            self._check_time_ids(model)
        self.vae = AutoencoderKL.from_pretrained(model, subfolder="vae", **self._weights(model, "vae"))
        self.scheduler = DDPMScheduler.from_pretrained(model, subfolder="scheduler")
        for part in (self.unet, self.vae, *(encoder for _, encoder in self.encoders.values())):
            dtype = vae_dtype(self.xl, part.config, weight_dtype) if part is self.vae else weight_dtype
            part.requires_grad_(False)
            part.to(self.device)
            if part.dtype != dtype:  # only then: diffusers warns about any dtype given to a VAE's to()
                part.to(dtype=dtype)

    def _weights(self, model: str, part: str) -> dict:
        """safetensors only (no pickles); on a GPU the part's fp16 files where it has them, as generation loads
        them (the Docker image bakes no others): the frozen weights are cast to weight_dtype anyway."""
        fp16 = self.device.type == "cuda" and has_fp16_weights(model, part)
        return {"use_safetensors": True} | ({"variant": "fp16"} if fp16 else {})

    def _part(self, model: str, subfolder: str, cls):
        weights = {} if subfolder.startswith("tokenizer") else self._weights(model, subfolder)
        try:
            return cls.from_pretrained(model, subfolder=subfolder, **weights)
        except OSError as e:
            if not self.xl:
                raise
            raise SystemExit(f"SDXL training needs {model}'s {subfolder}/ ({e}); both text encoders and tokenizers "
                             "are needed (the SDXL refiner has only the second): train on the base model") from None

    def _check_time_ids(self, model: str) -> None:
        """The UNet's added embedding reads 6 time ids and the pooled text: the SDXL base, not the refiner."""
        config = self.unet.config
        expected = 6 * config.addition_time_embed_dim + self.text_encoder_2.config.projection_dim
        if config.projection_class_embeddings_input_dim != expected:
            raise SystemExit(f"{model}'s UNet reads {config.projection_class_embeddings_input_dim} added values, "
                             f"not the {expected} of SDXL's 6 time ids and pooled text (the SDXL refiner adds an "
                             "aesthetic score): train on the SDXL base model")

    def _add_adapters(self, rank: int) -> None:
        """peft LoRA layers on the UNet's attention (and the chosen text encoders'); they train in fp32."""
        from peft import LoraConfig

        lora = {"r": rank, "lora_alpha": rank, "init_lora_weights": "gaussian"}
        self.unet.add_adapter(LoraConfig(**lora, target_modules=UNET_TARGETS))
        self.named_params = {f"unet.{n}": p for n, p in self.unet.named_parameters() if p.requires_grad}
        for name in self.trained_text:
            encoder = self.encoders[name][1]
            encoder.add_adapter(LoraConfig(**lora, target_modules=TEXT_TARGETS))
            self.named_params |= {f"{name}.{n}": p for n, p in encoder.named_parameters() if p.requires_grad}
        for p in self.named_params.values():  # whatever dtype the frozen weights are in
            p.data = p.data.float()

    def _latents(self, pixels, gen):
        """The VAE's latents of the pixels (a draw from its distribution), scaled as the UNet reads them."""
        import torch

        vae = self.vae
        autocast = self.autocast_dtype is not None and vae.dtype != torch.float32  # an fp32 VAE stays in fp32
        with torch.no_grad(), torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=autocast):
            dist = vae.encode(pixels.to(self.device, vae.dtype)).latent_dist
            sample = torch.randn(dist.mean.shape, generator=gen).to(self.device, dist.mean.dtype)
            return ((dist.mean + dist.std * sample) * vae.config.scaling_factor).float()

    def condition(self, captions: list[str], views: list[View]):
        """What the UNet reads besides the noisy latents: (hidden states, added_cond_kwargs or None)."""
        import torch

        ids = [tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True,
                   return_tensors="pt").input_ids.to(self.device) for tok, _ in self.encoders.values()]
        if not self.xl:
            return self.text_encoder(ids[0])[0], None
        first = self.text_encoder(ids[0], output_hidden_states=True)
        second = self.text_encoder_2(ids[1], output_hidden_states=True)
        hidden = torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1)
        pooled = second.text_embeds
        time_ids = torch.tensor([[*v.original_size, *v.crop_top_left, self.resolution, self.resolution]
                                 for v in views], dtype=pooled.dtype, device=self.device)
        return hidden, {"text_embeds": pooled, "time_ids": time_ids}

    def loss(self, views: list[View], captions: list[str], seed: int):
        """MSE between the UNet's prediction and the noise (or v) the scheduler asks for, from `seed`'s draws."""
        import torch
        import torch.nn.functional as F

        gen = torch.Generator("cpu").manual_seed(seed)
        latents = self._latents(to_pixels([v.image for v in views]), gen)
        noise = torch.randn(latents.shape, generator=gen).to(self.device, latents.dtype)
        steps = torch.randint(0, self.scheduler.config.num_train_timesteps, (latents.shape[0],), generator=gen)
        steps = steps.to(self.device)
        noisy = self.scheduler.add_noise(latents, noise, steps)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            hidden, added = self.condition(captions, views)
            pred = self.unet(noisy, steps, hidden, added_cond_kwargs=added).sample
        kind = self.scheduler.config.prediction_type
        target = noise if kind == "epsilon" else self.scheduler.get_velocity(latents, noise, steps)
        weights = product_weights(views, pred.shape[-2:], self.args.background_weight)
        if weights is None:
            return F.mse_loss(pred.float(), target.float())
        return ((pred.float() - target.float()) ** 2 * weights.to(pred.device)).mean()

    def set_training(self, on: bool) -> None:
        """Training mode for the modules being trained: transformers checkpoints gradients only in training mode."""
        self.unet.train(on)
        for name in self.trained_text:
            self.encoders[name][1].train(on)

    def probe_loss(self, items: list) -> float:
        """The loss on a fixed batch (centre crops, fixed noise and timesteps): lower means it learnt the photos."""
        import torch

        self.set_training(False)
        batch = items[:4]
        views = [augment(p.image, self.resolution, random.Random(0), False, False, 0, p.box, p.mask) for p in batch]
        with torch.no_grad():
            return float(self.loss(views, [p.caption for p in batch], PROBE_SEED))

    def step(self, items: list, step: int) -> float:
        """One optimizer step over `--grad-accum` batches; the draws depend only on (seed, step)."""
        import torch

        args, total = self.args, 0.0
        self.set_training(True)
        for micro in range(args.grad_accum):
            rng = random.Random(_seed(args.seed, step, micro))
            batch = [items[rng.randrange(len(items))] for _ in range(args.batch_size)]
            views = [augment(p.image, self.resolution, rng, args.crop, args.flip, args.color_jitter, p.box, p.mask)
                     for p in batch]
            captions = [p.caption for p in batch]
            loss = self.loss(views, captions, _seed(args.seed, step, micro, "noise")) / args.grad_accum
            (self.scaler.scale(loss) if self.scaler else loss).backward()
            total += float(loss.detach())
        params = list(self.named_params.values())
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total

    def metadata(self, step: int, photos: int) -> dict[str, str]:
        """What the LoRA file says about itself after `step` steps on `photos` photos (backend.lora.metadata)."""
        return lora_metadata(self, step, photos)

    def save_lora(self, output: Path, metadata: dict[str, str] | None = None) -> None:
        """The diffusers layout that load_lora_weights (and our /v1/products) takes as it is, with `metadata`
        (see `metadata()`) in its header."""
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
        from peft.utils import get_peft_model_state_dict
        from safetensors.torch import save_file

        # no embedding layer is trained; peft's "auto" would look for the model's config on the Hub to find out
        layers = {"unet_lora_layers": get_peft_model_state_dict(self.unet, save_embedding_layers=False)}
        for name in self.trained_text:
            layers[f"{name}_lora_layers"] = get_peft_model_state_dict(self.encoders[name][1],
                                                                      save_embedding_layers=False)
        output.parent.mkdir(parents=True, exist_ok=True)
        pipeline = StableDiffusionXLPipeline if self.xl else StableDiffusionPipeline
        pipeline.save_lora_weights(output.parent, **layers, weight_name=output.name, safe_serialization=True,
                                   save_function=lambda weights, path: save_file(
                                       weights, path, metadata=metadata or {"format": "pt"}))
