"""A finished job's settings, reused: the Create page's values for "Use these settings", the spec
"More like this" sends again with a new seed, and the settings a Showroom (or A1111) PNG carries.
Nothing here draws.

A manifest holds the resolved spec, whose prompt has the product's trigger words where `<product>` was
(or before it, when the prompt had no `<product>`); they are turned back into `<product>`, so the
prompt reads as it was written and is not given the trigger words twice when it is sent again. Where a
job's prompt is shown, the product's name stands there instead (`shown_prompt`): the owner never chose
those made-up words.
"""

import io
import json
import math
import re

from PIL import Image, UnidentifiedImageError

from frontend import placement
from frontend.jobs import JobView

PRODUCT_TOKEN = "<product>"
MAX_SEED = 2**53 - 1 - 16  # the Create page's seed field
SPEC_FIELDS = ("negative_prompt", "product", "template", "loras", "num_images", "steps", "guidance_scale",
               "width", "height", "strength", "mode", "placement", "shadow", "harmonize", "reflection")


def written_prompt(spec: dict, trigger: str | None) -> str:
    prompt = str(spec.get("prompt") or "")
    if spec.get("product") and trigger and trigger in prompt:
        return prompt.replace(trigger, PRODUCT_TOKEN)
    return prompt


def shown_prompt(view: JobView, trigger: str | None) -> str:
    """The job's prompt as its owner reads it: the product's name where its trigger words (or `<product>`,
    in a job not yet started) are. For the page only: the manifest and what is sent keep the trigger words.
    A product deleted since has no trigger words to find: its prompt is shown as it is."""
    if not view.product:
        return view.prompt
    return written_prompt({"prompt": view.prompt, "product": view.product}, trigger).replace(PRODUCT_TOKEN,
                                                                                             view.product)


def compose_values(view: JobView, trigger: str | None, native: int) -> dict:
    """The Create page's widget values that make this job again (the keys of compose.COMPOSE_KEYS)."""
    return form_values(view.spec, trigger, native, images=len(view.images))


def form_values(spec: dict, trigger: str | None, native: int, images: int | None = None) -> dict:
    """A spec as the Create page's widget values; without `num_images` in the spec or `images`, the
    form keeps its own count (a single picture's settings say nothing of how many were made). A field of
    the wrong kind (a PNG's text can hold anything) takes the form's default, and every number is kept
    within its widget's range: a value a widget refuses would break the page for the rest of the session."""
    width = _clamp(_multiple_of_8(int(_number(spec.get("width"), 0) or native)), 64, 2048)
    height = _clamp(_multiple_of_8(int(_number(spec.get("height"), 0) or native)), 64, 2048)
    seed, product, template, mode = spec.get("seed"), spec.get("product"), spec.get("template"), spec.get("mode")
    values = {
        "product": product if isinstance(product, str) else "",
        "template_id": template if isinstance(template, str) else None,
        "prompt": written_prompt(spec, trigger), "negative": str(spec.get("negative_prompt") or ""),
        "steps": _clamp(int(_number(spec.get("steps"), 0) or 30), 1, 150),
        "guidance": _clamp(_number(spec.get("guidance_scale"), 7.5), 0.0, 30.0),
        "width": width, "height": height,
        "seed": seed if isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed <= MAX_SEED else None,
        "strength": _clamp(_number(spec.get("strength"), 0.5), 0.0, 1.0),
        "mode": mode if mode in placement.MODES else "generate", "aspect": placement.preset_for(width, height, native),
        "shadow": bool(spec.get("shadow", True)), "harmonize": bool(spec.get("harmonize", True)),
        "reflection": _clamp(_number(spec.get("reflection"), 0.0), 0.0, 0.8),
    }
    if count := int(_number(spec.get("num_images"), 0)) or images:
        values["num_images"] = _clamp(count, 1, 16)
    at = spec.get("placement")
    if isinstance(at, dict):
        values["place_at"] = nearest_preset(_number(at.get("x"), 0.5), _number(at.get("y"), 0.55))
        values["place_scale"] = round(_clamp(_number(at.get("scale"), 0.6), 0.2, 1.0) * 20) / 20  # the slider's steps
    return values


DECODE_PIXELS = 40_000_000  # past this, only the text ahead of the pixels is read


def png_settings(data: bytes) -> tuple[dict | None, str | None]:
    """The spec a PNG was made with, read from its `showroom` text chunk (JSON), else from A1111's
    `parameters` line; or None and why, in words."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format != "PNG":
                return None, (f"This file is a {img.format}, not a PNG: only a PNG keeps the settings a picture was "
                              "made with (a copy saved as JPEG or sent through a chat app loses them). Drop the PNG "
                              "Showroom gave you: its Download button saves it.")
            # Text before the pixels is in `info` without decoding anything; `text` also finds text after
            # them, by decoding the whole picture: only for a picture of a sane size (a 13000 x 13000 PNG
            # of a few hundred KB would take the app's memory).
            small = img.width * img.height <= DECODE_PIXELS
            text = dict(getattr(img, "text", {}) or {}) if small else {
                k: v for k, v in img.info.items() if isinstance(k, str) and isinstance(v, str)}
    except (UnidentifiedImageError, OSError, ValueError):
        return None, "This file is not a picture that can be read."
    try:
        spec = json.loads(text["showroom"]) if "showroom" in text else None
    except ValueError:
        spec = None
    if isinstance(spec, dict) and spec.get("prompt") is not None:
        return spec, None
    spec = parse_parameters(text.get("parameters") or "")
    if spec:
        return spec, None
    return None, ("This picture carries no settings: it was not made by Showroom (or another tool that writes "
                  "them, such as AUTOMATIC1111), or they were removed when it was saved again.")


A1111_FIELDS = {"Steps": "steps", "CFG scale": "guidance_scale", "Seed": "seed", "Denoising strength": "strength"}
_A1111_PAIR = re.compile(r'\s*([\w ]+):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def parse_parameters(text: str) -> dict:
    """A1111's `parameters` text: the prompt, a "Negative prompt:" line, then "Steps: N, CFG scale: X, ...".
    {} when it holds none of them."""
    lines = text.strip().splitlines()
    if not lines:
        return {}
    spec: dict = {}
    if "Steps:" in lines[-1]:
        for name, value in _A1111_PAIR.findall(lines.pop()):
            name, value = name.strip(), value.strip().strip('"')
            if name == "Size" and re.fullmatch(r"\d+x\d+", value):
                spec["width"], spec["height"] = (int(v) for v in value.split("x"))
            elif name in A1111_FIELDS:
                try:
                    number = float(value)
                except ValueError:
                    continue
                if not math.isfinite(number):  # "nan", "inf": no setting, and no int to be made of it
                    continue
                spec[A1111_FIELDS[name]] = int(number) if name in ("Steps", "Seed") else number
    negative = next((i for i, line in enumerate(lines) if line.startswith("Negative prompt:")), None)
    if negative is not None:
        spec["negative_prompt"] = "\n".join(lines[negative:]).removeprefix("Negative prompt:").strip()
        lines = lines[:negative]
    if lines:
        spec["prompt"] = "\n".join(lines).strip()
    return spec


def variation(view: JobView, trigger: str | None) -> dict:
    """The job's spec again with a new seed (null: the backend draws one)."""
    spec = {name: view.spec[name] for name in SPEC_FIELDS if view.spec.get(name) is not None}
    return spec | {"prompt": written_prompt(view.spec, trigger), "seed": None}


def nearest_preset(x: float, y: float) -> str:
    return min(placement.PRESETS, key=lambda p: (placement.PRESETS[p].x - x) ** 2 + (placement.PRESETS[p].y - y) ** 2)


def _number(value, default: float) -> float:
    """A spec's field as a finite number, else `default`."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return default
    try:
        number = float(value)
    except ValueError:
        return default
    return number if math.isfinite(number) else default


def _multiple_of_8(value: int) -> int:
    return max(8, round(value / 8) * 8)


def _clamp(value, low, high):
    return max(low, min(high, value))
