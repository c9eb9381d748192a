"""A finished job's settings, reused: the Create page's values for "Use these settings", and the spec
"More like this" sends again with a new seed. Nothing here draws.

A manifest holds the resolved spec, whose prompt has the product's trigger words where `<product>` was
(or before it, when the prompt had no `<product>`); they are turned back into `<product>`, so the
prompt reads as it was written and is not given the trigger words twice when it is sent again.
"""

from frontend import placement
from frontend.jobs import JobView

PRODUCT_TOKEN = "<product>"
SPEC_FIELDS = ("negative_prompt", "product", "template", "loras", "num_images", "steps", "guidance_scale",
               "width", "height", "strength", "mode", "placement", "shadow", "harmonize")


def written_prompt(spec: dict, trigger: str | None) -> str:
    prompt = str(spec.get("prompt") or "")
    if spec.get("product") and trigger and trigger in prompt:
        return prompt.replace(trigger, PRODUCT_TOKEN)
    return prompt


def compose_values(view: JobView, trigger: str | None, native: int) -> dict:
    """The Create page's widget values that make this job again (the keys of compose.COMPOSE_KEYS)."""
    spec = view.spec
    width, height = int(spec.get("width") or native), int(spec.get("height") or native)
    values = {
        "product": spec.get("product") or "", "template_id": spec.get("template"),
        "prompt": written_prompt(spec, trigger), "negative": str(spec.get("negative_prompt") or ""),
        "num_images": _clamp(int(spec.get("num_images") or len(view.images) or 4), 1, 16),
        "steps": _clamp(int(spec.get("steps") or 30), 1, 150),
        "guidance": float(spec.get("guidance_scale") if spec.get("guidance_scale") is not None else 7.5),
        "width": width, "height": height, "seed": spec.get("seed"),
        "strength": float(spec.get("strength") if spec.get("strength") is not None else 0.5),
        "mode": spec.get("mode") or "generate", "aspect": _aspect(width, height, native),
        "shadow": bool(spec.get("shadow", True)), "harmonize": bool(spec.get("harmonize", True)),
    }
    at = spec.get("placement")
    if isinstance(at, dict):
        values["place_at"] = nearest_preset(float(at.get("x", 0.5)), float(at.get("y", 0.55)))
        values["place_scale"] = round(_clamp(float(at.get("scale", 0.6)), 0.2, 1.0) * 20) / 20  # the slider's steps
    return values


def variation(view: JobView, trigger: str | None) -> dict:
    """The job's spec again with a new seed (null: the backend draws one)."""
    spec = {name: view.spec[name] for name in SPEC_FIELDS if view.spec.get(name) is not None}
    return spec | {"prompt": written_prompt(view.spec, trigger), "seed": None}


def nearest_preset(x: float, y: float) -> str:
    return min(placement.PRESETS, key=lambda p: (placement.PRESETS[p].x - x) ** 2 + (placement.PRESETS[p].y - y) ** 2)


def _aspect(width: int, height: int, native: int) -> str | None:
    """The canvas preset that gives exactly this size, or None (a custom size)."""
    return next((a for a in placement.ASPECTS if placement.canvas_size(a, native) == (width, height)), None)


def _clamp(value, low, high):
    return max(low, min(high, value))
