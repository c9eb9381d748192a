"""Download MODEL_ID into the Hugging Face cache (HF_HOME) at image build time, for fast cold starts.

    python docker/bake_model.py stable-diffusion-v1-5/stable-diffusion-v1-5

Fetches what the backend loads on a GPU: the fp16 weights where the backend asks for them, safetensors
only, and no safety checker (the backend turns it off). Uses diffusers' own `DiffusionPipeline.download`,
so the files land exactly where `from_pretrained` looks for them.
Runs before the code is copied into the image: it imports nothing from backend/.
"""

import sys
from collections.abc import Callable

# Hub ids whose fp16 weights the backend loads on a GPU: the same rule as `has_fp16_weights` in
# backend/gpu/devices.py (tests/deploy checks that they agree). Other models load their default weights.
FP16_PREFIXES = ("stable-diffusion-v1-5/", "stabilityai/")


def bake(model_id: str, download: Callable[..., str]) -> str:
    options = {"use_safetensors": True, "safety_checker": None}
    if model_id.startswith(FP16_PREFIXES):
        return download(model_id, variant="fp16", **options)
    return download(model_id, **options)


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0].strip():
        print("usage: python docker/bake_model.py MODEL_ID", file=sys.stderr)
        return 2
    from diffusers import DiffusionPipeline

    print(f"baked {argv[0]} into {bake(argv[0].strip(), DiffusionPipeline.download)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
