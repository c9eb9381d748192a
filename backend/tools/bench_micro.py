"""Part 2's measurements of the models themselves (backend/tools/bench.py; also gpu-check and gpu_profile): the
Stable Diffusion architectures built with random weights (no download), the TFLOP of a CFG step counted on the meta
device, and UNet steps and latent decodes timed for dtype x attention x memory format x batch, with torch.compile.
"""

import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Arch:
    """A Stable Diffusion architecture to build with random weights: configs and native image size."""
    unet: dict
    vae: dict
    text: dict
    size: int


SD15 = Arch(  # stable-diffusion-v1-5's unet/, vae/ and text_encoder/ config.json (CLIP ViT-L/14's text tower)
    unet=dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, norm_num_groups=32,
              block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
              down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
              up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3),
    vae=dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
             block_out_channels=(128, 256, 512, 512), norm_num_groups=32,
             down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4),
    text=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
              vocab_size=49408, max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu"),
    size=512,
)
TINY = Arch(  # backend/tiny.py's sizes: part 2's code on a CPU in seconds (--gpu --arch tiny, and the tests)
    unet=dict(sample_size=32, in_channels=4, out_channels=4, layers_per_block=1, norm_num_groups=4,
              block_out_channels=(8, 16), cross_attention_dim=16, attention_head_dim=2,
              down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
              up_block_types=("CrossAttnUpBlock2D", "UpBlock2D")),
    vae=dict(in_channels=3, out_channels=3, latent_channels=4, sample_size=64, block_out_channels=(8, 16),
             norm_num_groups=4, down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2),
    text=dict(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=2, vocab_size=49408,
              max_position_embeddings=77, projection_dim=16),
    size=64,
)


def build_models(arch: Arch, device: str = "cpu", dtype=None, tokenizer=None, seed: int = 0):
    """UNet, VAE and CLIP text encoder of `arch` with random weights, made directly on `device`."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    ids = {}
    if tokenizer is not None:
        ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                   pad_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    with torch.device(device):
        models = (UNet2DConditionModel(**arch.unet), AutoencoderKL(**arch.vae),
                  CLIPTextModel(CLIPTextConfig(**arch.text, **ids)))
    return tuple(m.to(dtype).eval() if dtype is not None else m.eval() for m in models)


def count_tflop(arch: Arch) -> dict:
    """TFLOP of one CFG step, one VAE decode and the two prompt encodings, counted on the meta device."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    unet, vae, text = build_models(arch, device="meta")
    latent, ctx = arch.size // 8, arch.unet["cross_attention_dim"]
    with torch.device("meta"):
        calls = {"unet_cfg_step": lambda: unet(torch.randn(2, 4, latent, latent), torch.tensor([500, 500]),
                                               encoder_hidden_states=torch.randn(2, 77, ctx)),
                 "vae_decode": lambda: vae.decode(torch.randn(1, 4, latent, latent)),
                 "text_cfg": lambda: text(torch.zeros(2, 77, dtype=torch.long))}
        out = {}
        for name, call in calls.items():
            with FlopCounterMode(display=False) as counter, torch.no_grad():
                call()
            out[name] = counter.get_total_flops() / 1e12
    return out


def ceiling_fraction(tflop: float, seconds: float, peak_tflops: float) -> float:
    """Achieved TFLOP/s as a fraction of the peak."""
    return tflop / seconds / peak_tflops


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed_ms(fn, device: str, iters: int, warmup: int = 2) -> float:
    """Mean milliseconds per call after warm-up: CUDA events on a GPU, perf_counter elsewhere."""
    import torch

    for _ in range(warmup):
        fn()
    if not device.startswith("cuda"):
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        return (time.perf_counter() - t0) * 1000 / iters
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / iters


def unet_step(unet, arch: Arch, batch: int, device: str, dtype, channels_last: bool):
    """One CFG denoising step of `batch` images: the UNet on 2 x batch latents."""
    import torch

    latent = arch.size // 8
    x = torch.randn(2 * batch, 4, latent, latent, device=device, dtype=dtype)
    x = x.to(memory_format=torch.channels_last) if channels_last else x
    t = torch.full((2 * batch,), 500, device=device)
    ctx = torch.randn(2 * batch, 77, arch.unet["cross_attention_dim"], device=device, dtype=dtype)

    def step():
        with torch.inference_mode():
            return unet(x, t, encoder_hidden_states=ctx, return_dict=False)[0]
    return step


def unet_row(dtype: str, attention: str, channels_last: bool, batch: int, ms: float, tflop_step: float,
             args) -> dict:
    return {"dtype": dtype, "attention": attention, "channels_last": channels_last, "batch": batch,
            "ms_per_step": round(ms, 3), "it_per_s": round(1000 / ms, 2),
            "images_per_s_30": round(batch * 1000 / (ms * args.gpu_steps), 2),
            "ceiling": ceiling_fraction(tflop_step * batch, ms / 1000, args.peak_tflops)}


def decode_rows(args, vae, arch: Arch, device: str) -> list[dict]:
    """ms to decode one latent: the model's VAE against TAESD (TAESD_ID; madebyollin/taesd's architecture)."""
    import torch
    from diffusers import AutoencoderTiny

    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    taesd_config = {} if arch is SD15 else dict(encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
                                                  num_encoder_blocks=(1, 1), num_decoder_blocks=(1, 1))
    with torch.device(device):
        taesd = AutoencoderTiny(**taesd_config).to(dtype).eval()
    latent = torch.randn(1, 4, arch.size // 8, arch.size // 8, device=device, dtype=dtype)
    rows = []
    for name, decoder in (("vae", vae.to(dtype)), ("taesd", taesd)):
        def decode():
            with torch.inference_mode():
                return decoder.decode(latent, return_dict=False)[0]
        rows.append({"decoder": name, "ms": round(timed_ms(decode, device, args.iters), 3)})
    return rows


def unet_grid(args, unet, arch: Arch, device: str, tflop_step: float) -> list[dict]:
    """ms per CFG step for dtype x attention (SDPA or the classic math path) x memory format x batch."""
    import torch
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    rows = []
    for dtype_name in args.dtypes:
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
        unet.to(dtype)
        for attention, processor in (("sdpa", AttnProcessor2_0), ("math", AttnProcessor)):
            unet.set_attn_processor(processor())
            for channels_last in (True, False):
                unet.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
                for batch in args.batches:
                    ms = timed_ms(unet_step(unet, arch, batch, device, dtype, channels_last), device, args.iters)
                    rows.append(unet_row(dtype_name, attention, channels_last, batch, ms, tflop_step, args))
    return rows


def compile_rows(args, unet, arch: Arch, device: str, tflop_step: float) -> list[dict]:
    """torch.compile as COMPILE=true does it (fp16, SDPA, channels_last), one static-shape compile per batch."""
    import torch
    from diffusers.models.attention_processor import AttnProcessor2_0

    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    unet.to(dtype).to(memory_format=torch.channels_last)
    unet.set_attn_processor(AttnProcessor2_0())
    rows = []
    for batch in args.batches:
        torch._dynamo.reset()
        step = unet_step(torch.compile(unet, mode=args.compile_mode, fullgraph=True, dynamic=False), arch, batch,
                         device, dtype, True)
        t0 = time.perf_counter()
        step()
        sync(device)
        warm_s = time.perf_counter() - t0
        rows.append(unet_row("compiled", "sdpa", True, batch, timed_ms(step, device, args.iters), tflop_step, args)
                    | {"compile_warmup_s": round(warm_s, 2)})
    return rows
