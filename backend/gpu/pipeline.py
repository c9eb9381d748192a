"""The diffusers side, imported only inside worker processes (it imports torch).

One set of weights per worker: text-to-image and image-to-image share them (`from_pipe`).
Half precision on CUDA, fp32 on CPU and MPS (fp16 on MPS overflows into NaN and black images).
A NaN or black decode is retried once with the VAE in fp32; if it is still bad the image fails.
With TAESD_ID set, the final decode uses that tiny autoencoder (AutoencoderTiny) instead of the VAE.
"""

import hashlib
import io
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from backend.gpu.devices import has_fp16_weights
from backend.gpu.long_prompts import prompt_embeddings, window_count
from backend.gpu.messages import LoraTask, Task
from backend.gpu.previews import preview_jpegs, preview_steps
from backend.images import fit_photo
from backend.lora.formats import LoraNotApplied
from backend.lora.loading import forget_token_embeddings, load_lora_into, use_token_embeddings
from backend.place.composite import finish
from backend.place.layout import init_canvas, inpaint_mask

log = logging.getLogger("showroom.pipeline")
MAX_ADAPTERS = 16


class Canceled(Exception):
    pass


def place_inputs(layer: Image.Image, n: int) -> dict:
    """Inpainting's inputs for a product layer: the product over a neutral fill, and a mask that is
    white wherever the scene is generated. strength 1: the scene starts from pure noise."""
    return {"image": [init_canvas(layer)] * n, "mask_image": [inpaint_mask(layer)] * n, "strength": 1.0}


def bad_pixels(arr: np.ndarray) -> str | None:
    """Why a decoded image must not be stored, or None if it is fine."""
    if not np.isfinite(arr).all():
        return "the decoder produced NaN values (numerical overflow)"
    if arr.max() < 2 / 255:
        return "the image is entirely black"
    return None


class Adapters:
    """Caches the LoRAs loaded into one pipeline and switches between them with set_adapters."""

    def __init__(self, pipe, storage, cache_dir: Path):
        self.pipe, self.storage, self.cache_dir = pipe, storage, Path(cache_dir)
        self.loaded: OrderedDict[tuple[str, str], str] = OrderedDict()

    def _ensure(self, lora: LoraTask) -> str:
        version = self.storage.version(lora.key)
        cache_key = (lora.name, version)
        if cache_key in self.loaded:
            self.loaded.move_to_end(cache_key)
            return self.loaded[cache_key]
        # A file name of letters, digits and _ only, whatever the task says: a name from the broker is no path.
        adapter = re.sub(r"\W", "_", f"{lora.name[:64]}_{hashlib.sha1(version.encode()).hexdigest()[:8]}")
        path = self.cache_dir / f"{adapter}.safetensors"
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.storage.get(lora.key))
        try:  # the file is checked before the pipeline changes: a refused one leaves nothing behind
            load_lora_into(self.pipe, path, adapter)
        except Exception as e:
            raise LoraNotApplied(lora.name, e) from e
        finally:  # loaded, the weights live in the pipeline: the cache on disk never grows with the catalog
            path.unlink(missing_ok=True)
        self.loaded[cache_key] = adapter
        while len(self.loaded) > MAX_ADAPTERS:
            _, old = self.loaded.popitem(last=False)
            self.pipe.delete_adapters(old)
            forget_token_embeddings(self.pipe, old)
        log.info("loaded LoRA %s as adapter %s", lora.name, adapter)
        return adapter

    def activate(self, loras: tuple[LoraTask, ...]) -> None:
        if not loras:
            if self.loaded:
                self.pipe.disable_lora()
            return
        names = [self._ensure(lora) for lora in loras]
        self.pipe.enable_lora()
        self.pipe.set_adapters(names, adapter_weights=[lora.weight for lora in loras])
        # cloneofsimo LoRAs all name their token <s1>: point it at this job's embedding (the product's, if several)
        use_token_embeddings(self.pipe, names)


RECOMPILE_LIMIT = 32  # graphs kept per compiled function; past it, a new shape or LoRA set runs uncompiled


def compile_in_place(unet, backend: str = "inductor") -> None:
    """COMPILE: torch.compile the UNet's forward in place. In place, not `torch.compile(unet)`: that wraps
    it in an OptimizedModule, which diffusers' LoRA calls (set_adapters, disable_lora, delete_adapters) do
    not recognise as a model and skip without a word, so product jobs failed and a job without a LoRA kept
    the last one. No fullgraph: a graph break or the recompile limit then costs speed, not the job.
    Shapes start static and turn dynamic where they are seen to change (batch sizes). Every new LoRA set
    or weight still compiles again (about a minute on a GPU): COMPILE suits a box that serves few products.
    Mode "default", as gpu-check measures it: "max-autotune" spends minutes on each of those recompiles."""
    config = torch._dynamo.config
    limit = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, limit, max(getattr(config, limit), RECOMPILE_LIMIT))
    unet.compile(backend=backend, **({"mode": "default"} if backend == "inductor" else {}))


def allow_tf32() -> None:
    """fp32 matmuls and convolutions (SDXL's fp32 VAE, training) may use TF32: torch 2.9 and later name it
    `fp32_precision` and warn on the old flags."""
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        torch.backends.cudnn.conv.fp32_precision = "tf32"
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


class Generator:
    def __init__(self, model_id: str, device: str, storage, cache_dir: Path, compile_unet: bool = False,
                 taesd_id: str | None = None, inpaint_model_id: str | None = None):
        from diffusers import AutoPipelineForImage2Image, AutoPipelineForText2Image

        self.device, self.storage, self.model_id = device, storage, model_id
        cuda = device.startswith("cuda")
        self.dtype = torch.float16 if cuda else torch.float32
        if cuda:
            allow_tf32()
        extra = self._no_safety_checker()
        variant = "fp16" if cuda and has_fp16_weights(model_id) else None
        self.t2i = AutoPipelineForText2Image.from_pretrained(
            model_id, dtype=self.dtype, use_safetensors=True, variant=variant, **extra)
        self.t2i.to(device)
        self.t2i.set_progress_bar_config(disable=True)
        if cuda:
            self.t2i.unet.to(memory_format=torch.channels_last)
            self.t2i.vae.to(memory_format=torch.channels_last)
            if compile_unet:
                compile_in_place(self.t2i.unet)
        self.compiled = cuda and compile_unet
        # Latents decoded per VAE call: on a GPU a few at once (about 4 of 512x512 fits any card we rent);
        # on the CPU one at a time, which costs nothing and keeps the peak memory low.
        self.decode_pixels = 4 * 512 * 512 if cuda else 1
        self.i2i = AutoPipelineForImage2Image.from_pipe(self.t2i)
        self.i2i.set_progress_bar_config(disable=True)
        self.native_size = int(self.t2i.unet.config.sample_size * self.t2i.vae_scale_factor)
        self.decoder = self._load_taesd(taesd_id) if taesd_id else self.t2i.vae
        # SDXL's VAE overflows in fp16 on nearly every image: it decodes in fp32 from the start (its
        # img2img pipeline casts it back after encoding a photo, so _decode checks before each use).
        upcast = (cuda and not taesd_id and getattr(self.decoder.config, "force_upcast", False)
                  and getattr(self.t2i, "text_encoder_2", None) is not None)
        self.decoder_dtype = torch.float32 if upcast else self.dtype
        self.adapters = Adapters(self.t2i, storage, cache_dir)
        self.cache_dir = Path(cache_dir)
        self.inpaint_model_id, self._inpaint = inpaint_model_id, None
        self.inpaint_adapters: Adapters | None = None  # a dedicated inpainting checkpoint's own LoRAs

    def inpainter(self):
        """Place mode's pipeline, made on first use: a dedicated inpainting checkpoint (INPAINT_MODEL_ID),
        else MODEL_ID's own weights shared through from_pipe (no second copy in memory)."""
        if self._inpaint is None:
            from diffusers import AutoPipelineForInpainting

            if self.inpaint_model_id:
                pipe = AutoPipelineForInpainting.from_pretrained(self.inpaint_model_id, dtype=self.dtype,
                                                                 use_safetensors=True, **self._no_safety_checker())
                pipe.to(self.device)
                # its own UNet and text encoder: a product's LoRA is loaded into it too, or place mode would
                # ignore the product's LoRA with INPAINT_MODEL_ID set
                self.inpaint_adapters = Adapters(pipe, self.storage, self.cache_dir / "inpaint")
            else:
                pipe = AutoPipelineForInpainting.from_pipe(self.t2i)
            pipe.set_progress_bar_config(disable=True)
            self._inpaint = pipe
        return self._inpaint

    def _load_taesd(self, taesd_id: str):
        """The tiny autoencoder: it decodes the UNet's (scaled) latents directly, in a fraction of the VAE's time."""
        from diffusers import AutoencoderTiny

        taesd = AutoencoderTiny.from_pretrained(taesd_id, dtype=self.dtype, use_safetensors=True)
        config, vae = taesd.config, self.t2i.vae.config
        scale = config.upsampling_scaling_factor ** (len(config.num_decoder_blocks) - 1)
        if config.latent_channels != vae.latent_channels or scale != self.t2i.vae_scale_factor:
            raise ValueError(f"TAESD_ID {taesd_id!r} does not fit {self.model_id!r}: it decodes "
                             f"{config.latent_channels} latent channels {scale}x up, the model needs "
                             f"{vae.latent_channels} channels {self.t2i.vae_scale_factor}x up "
                             "(madebyollin/taesd fits SD 1.x/2.x, madebyollin/taesdxl fits SDXL)")
        taesd.to(self.device).eval()
        if self.device.startswith("cuda"):
            taesd.to(memory_format=torch.channels_last)
        log.info("decoding with TAESD %s instead of the VAE", taesd_id)
        return taesd

    def _no_safety_checker(self) -> dict:
        return {"safety_checker": None, "requires_safety_checker": False} if self._has_safety_checker() else {}

    def _has_safety_checker(self) -> bool:
        index = Path(self.model_id) / "model_index.json"
        if index.is_file():
            return "safety_checker" in index.read_text()
        return "xl" not in self.model_id.lower()

    def warm_up(self) -> None:
        """One small generation so the first user image does not pay for lazy initialisation; with
        COMPILE, the shape real jobs use (native size, guidance on, one image) so its compile happens here."""
        size = self.native_size if self.compiled else min(self.native_size, 256)
        with torch.inference_mode():  # as jobs run: a graph compiled under no_grad alone would not be reused
            self.t2i(prompt="warm up", num_inference_steps=2 if self.compiled else 1, width=size, height=size,
                     output_type="latent", guidance_scale=7.5 if self.compiled else 1.0)

    def _decode(self, latents: torch.Tensor) -> list[Image.Image | str]:
        """Decode latents to images; each entry is a picture or the reason it cannot be stored."""
        vae = self.decoder
        if vae.dtype != self.decoder_dtype:
            vae.to(self.decoder_dtype)
        results: list[Image.Image | str] = [""] * latents.shape[0]
        good = []
        for i in range(latents.shape[0]):
            if torch.isfinite(latents[i]).all():
                good.append(i)
            else:
                results[i] = "the model produced NaN values (numerical overflow); try another seed"
        per_call = max(1, self.decode_pixels // (latents.shape[2] * latents.shape[3] * self.t2i.vae_scale_factor ** 2))
        for start in range(0, len(good), per_call):
            chunk = good[start:start + per_call]
            for i, arr in zip(chunk, self._decode_many(vae, latents[chunk], vae.dtype)):
                reason = bad_pixels(arr)
                if reason and vae.dtype != torch.float32:
                    log.warning("%s in %s; decoding again in fp32", reason, vae.dtype)
                    vae.to(torch.float32)
                    try:
                        arr = self._decode_many(vae, latents[i:i + 1], torch.float32)[0]
                    finally:
                        vae.to(self.decoder_dtype)
                    reason = bad_pixels(arr)
                results[i] = reason or Image.fromarray((arr * 255).round().astype(np.uint8))
        return results

    def _decode_many(self, vae, latents: torch.Tensor, dtype: torch.dtype) -> list[np.ndarray]:
        scaled = latents.to(dtype) / vae.config.scaling_factor
        if getattr(vae.config, "shift_factor", None):
            scaled = scaled + vae.config.shift_factor
        decoded = vae.decode(scaled, return_dict=False)[0]
        arrs = self.t2i.image_processor.postprocess(decoded.float(), output_type="np")
        return [arr.astype(np.float32) for arr in arrs]

    def generate(self, task: Task, should_cancel: Callable[[], bool], on_step: Callable[[int, int], None],
                 on_preview: Callable[[list[bytes]], None] | None = None) -> list[Image.Image | str]:
        """Run one batch; image i of the task comes from its own seed, whatever the batch size.
        `on_preview` gets one small JPEG per image a few times while they sharpen."""
        n = len(task.indices)
        self.adapters.activate(task.loras)
        xl = getattr(self.t2i, "text_encoder_2", None) is not None

        def callback(pipe, step, timestep, kwargs):
            if should_cancel():
                raise Canceled()
            total = getattr(pipe, "num_timesteps", None) or task.steps  # restyle runs steps x strength of them
            on_step(step + 1, total)
            if on_preview and step + 1 in preview_steps(total):
                jpegs = preview_jpegs(kwargs.get("latents"), xl, task.width, task.height)
                if jpegs:
                    on_preview(jpegs[:n])
            return kwargs

        kwargs = dict(
            prompt=[task.prompt] * n, negative_prompt=[task.negative_prompt] * n,
            num_inference_steps=task.steps, guidance_scale=task.guidance_scale,
            # CPU generators: the same seed gives the same noise on any GPU, CPU or batch size.
            generator=[torch.Generator("cpu").manual_seed(s) for s in task.seeds],
            output_type="latent", callback_on_step_end=callback,
        )
        layer = None
        if task.mode == "place":
            layer = Image.open(io.BytesIO(self.storage.get(task.layout_key))).convert("RGBA")
            pipe, kwargs = self.inpainter(), kwargs | place_inputs(layer, n) | {"width": task.width,
                                                                             "height": task.height}
            if self.inpaint_adapters is not None:
                self.inpaint_adapters.activate(task.loras)
        elif task.mode == "restyle":
            photo = fit_photo(Image.open(io.BytesIO(self.storage.get(task.input_key))), task.width, task.height)
            pipe, kwargs = self.i2i, kwargs | {"image": [photo] * n, "strength": task.strength}
        else:
            pipe, kwargs = self.t2i, kwargs | {"width": task.width, "height": task.height}
        started = time.perf_counter()
        with torch.inference_mode():
            if max(window_count(pipe, task.prompt), window_count(pipe, task.negative_prompt)) > 1:
                del kwargs["prompt"], kwargs["negative_prompt"]  # past CLIP's 77 tokens: encoded window by window
                kwargs |= prompt_embeddings(pipe, task.prompt, task.negative_prompt, n)
            latents = pipe(**kwargs).images
            images = self._decode(latents)
        if layer is not None:  # the product's own pixels back, exactly; a shadow, a light wrap, a reflection
            images = [finish(img, layer, task.shadow, task.harmonize, task.reflection)
                      if isinstance(img, Image.Image) else img for img in images]
        log.info("job %s images %s: %d steps in %.2fs on %s", task.job_id, list(task.indices), task.steps,
                 time.perf_counter() - started, self.device)
        return images
