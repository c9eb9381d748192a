"""Make the sample pictures the style gallery shows on its cards: one small JPEG per template, stored beside
the templates (backend/products/samples/<id>.jpg), made once by whoever has a real model and a GPU.

    python -m backend.tools.template_samples --photo my-dog.jpg                  # the Art styles, from a photo
    python -m backend.tools.template_samples --photo my-dog.jpg --all --model stabilityai/stable-diffusion-xl-base-1.0

Art styles (and any template that restyles) repaint `--photo` with the template's own prompt, strength,
steps and guidance, as a job with that template would; the other templates (with --all) draw their scene
with "a ceramic mug" as the product. Each picture is made from a fixed seed, centre-cropped to a square and
saved small (`--size`, JPEG quality 80, a few KB): the repo carries them. Use a photo you may publish.
No sample is shipped until someone runs this with a real model (the tiny test model draws noise).
"""

import argparse
import io
import json
import sys
from pathlib import Path

from PIL import Image, ImageOps

SAMPLES = Path(__file__).resolve().parents[1] / "products" / "samples"
TEMPLATES = Path(__file__).resolve().parents[1] / "products" / "templates.json"
SUBJECT = "a ceramic mug"
SEED = 7


def wanted(templates: list[dict], everything: bool) -> list[dict]:
    return [t for t in templates if everything or t.get("category") == "art"]


def restyles(template: dict) -> bool:
    return "restyle" in (template.get("modes") or ["generate"])


def small_jpeg(image: Image.Image, size: int) -> bytes:
    out = io.BytesIO()
    ImageOps.fit(image.convert("RGB"), (size, size), Image.Resampling.LANCZOS).save(out, "JPEG", quality=80,
                                                                                     optimize=True)
    return out.getvalue()


def make(args) -> list[Path]:
    import torch

    from backend.gpu.messages import Task
    from backend.gpu.pipeline import Generator
    from backend.jobs.specs import size_for_aspect
    from backend.storage import LocalStorage

    templates = wanted(json.loads(TEMPLATES.read_text()), args.all)
    if any(restyles(t) for t in templates) and not args.photo:
        raise SystemExit("--photo is needed: the Art styles repaint a photo (use one you may publish)")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    work = Path(args.work)
    storage = LocalStorage(work / "storage")
    gen = Generator(args.model, device, storage, work / "cache")
    native = gen.native_size
    if args.photo:
        photo = ImageOps.exif_transpose(Image.open(args.photo)).convert("RGB")
        out = io.BytesIO()
        photo.save(out, "PNG")
        storage.put("samples/photo.png", out.getvalue(), "image/png")
        photo_w, photo_h = size_for_aspect(photo.width / photo.height, native)
    args.out.mkdir(parents=True, exist_ok=True)
    written = []
    for n, template in enumerate(templates):
        from_photo = restyles(template) and args.photo
        width, height = (photo_w, photo_h) if from_photo else (native, native)
        prompt = template["prompt"].replace("<product>", SUBJECT)
        task = Task(task_id=n, job_id="s" * 32, indices=(0,), seeds=(SEED,), keys=("samples/out.png",), prompt=prompt,
                    negative_prompt=template.get("negative_prompt") or "", steps=args.steps or template["steps"],
                    guidance_scale=template["guidance_scale"], width=width, height=height,
                    strength=template.get("strength") or 0.5, mode="restyle" if from_photo else "generate",
                    input_key="samples/photo.png" if from_photo else None)
        (image,) = gen.generate(task, lambda: False, lambda step, total: None)
        if not isinstance(image, Image.Image):
            raise SystemExit(f"{template['id']}: {image}")
        path = args.out / f"{template['id']}.jpg"
        path.write_bytes(small_jpeg(image, args.size))
        written.append(path)
        print(f"{path} ({path.stat().st_size // 1024} KB)", flush=True)
    return written


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="stable-diffusion-v1-5/stable-diffusion-v1-5", help="diffusers id or folder")
    p.add_argument("--photo", type=Path, help="the photo the Art styles repaint (yours to publish)")
    p.add_argument("--all", action="store_true", help="every template, not only the Art styles")
    p.add_argument("--out", type=Path, default=SAMPLES, help="where the JPEGs go (default: beside the templates)")
    p.add_argument("--size", type=int, default=192, help="side of the square sample, in pixels")
    p.add_argument("--steps", type=int, help="override each template's steps (a quick look)")
    p.add_argument("--device", help="cuda, cpu, mps (default: cuda when there is one)")
    p.add_argument("--work", default="/tmp/showroom-samples", help="scratch folder")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    make(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
