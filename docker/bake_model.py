"""Download MODEL_ID into the Hugging Face cache (HF_HOME) at image build time, for fast cold starts.

    python docker/bake_model.py stable-diffusion-v1-5/stable-diffusion-v1-5

Fetches what the backend loads on a GPU: the fp16 weights when the model has them (else the full
ones), safetensors only, and no safety checker (the backend turns it off). Uses diffusers' own
`DiffusionPipeline.download`, so the files land exactly where `from_pretrained` looks for them.
"""

import sys
from collections.abc import Callable


def bake(model_id: str, download: Callable[..., str]) -> str:
    options = {"use_safetensors": True, "safety_checker": None}
    try:
        return download(model_id, variant="fp16", **options)
    except (OSError, ValueError) as e:  # no fp16 variant of this model: take the full-precision weights
        print(f"no fp16 weights for {model_id} ({e}); fetching the default ones", file=sys.stderr)
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
