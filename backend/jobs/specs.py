"""From what a client asks (JobSpec) to exactly what is generated (ResolvedSpec): the template, the
product, the mode and the defaults applied, and every rule checked with the value in the message."""

import math
import secrets

from backend.errors import InvalidRequest, UnknownReference
from backend.models import JobSpec, Placement, Product, ResolvedSpec, Template

DEFAULT_STEPS, DEFAULT_GUIDANCE, DEFAULT_STRENGTH = 30, 7.5, 0.5
PRODUCT_TOKEN = "<product>"
MIN_SIDE, MAX_SIDE = 64, 2048


def size_for_aspect(aspect: float, native: int) -> tuple[int, int]:
    """Width and height with the given aspect (width / height) at about native × native pixels, in
    multiples of 8 within the contract's 64..2048."""
    width = math.sqrt(native * native * aspect)
    height = width / aspect
    # Grown or shrunk as a whole when a side leaves 64..2048, so the aspect holds where it can.
    factor = max(MIN_SIDE / min(width, height), 1.0)
    factor = min(factor, MAX_SIDE / max(width, height))
    return _side(width * factor), _side(height * factor)


def choose_mode(spec: JobSpec, has_photo: bool, product: Product | None) -> str:
    mode = spec.mode or ("restyle" if has_photo else "generate")
    if mode == "restyle" and not has_photo:
        raise InvalidRequest("mode 'restyle' repaints a photo: send one as the multipart part 'image'")
    if mode == "generate" and has_photo:
        raise InvalidRequest("mode 'generate' uses no photo: leave the photo out, or choose mode 'restyle' "
                             "(the photo is repainted) or 'place' (the product is kept exactly)")
    if mode == "place" and not has_photo and not (product and product.packshot_key):
        which = f"product {product.name!r} has no packshot" if product else "no product is named"
        raise InvalidRequest(f"mode 'place' needs a photo of the product (multipart part 'image'), or a product "
                             f"with a packshot; {which}")
    if spec.placement is not None and mode != "place":
        raise InvalidRequest(f"placement is used only in mode 'place', got mode {mode!r}")
    if spec.reflection and mode != "place":  # a reflection needs a product layer to mirror
        raise InvalidRequest(f"reflection is used only in mode 'place', got mode {mode!r}")
    return mode


def fill_prompt(spec: JobSpec, template: Template | None, product: Product | None) -> str:
    prompt = spec.prompt if spec.prompt is not None else (template.prompt if template else "")
    if product:
        prompt = prompt.replace(PRODUCT_TOKEN, product.trigger) if PRODUCT_TOKEN in prompt \
            else f"{product.trigger}, {prompt}".strip(", ")
    elif PRODUCT_TOKEN in prompt:
        prompt = prompt.replace(PRODUCT_TOKEN, "the product")
    prompt = prompt.strip()
    if not prompt:
        raise InvalidRequest("prompt is empty: give a prompt, or a template that has one")
    if len(prompt) > 1000:
        raise InvalidRequest(f"prompt must be at most 1000 characters once the template is applied, got {len(prompt)}")
    return prompt


def resolve(spec: JobSpec, *, template: Template | None, product: Product | None, native: int,
            photo_size: tuple[int, int] | None) -> ResolvedSpec:
    """`photo_size` is the uploaded photo's (width, height), or None without a photo."""
    if template is None and spec.template:
        raise UnknownReference(f"unknown template {spec.template!r}; GET /v1/catalog lists them")
    mode = choose_mode(spec, photo_size is not None, product)
    prompt = fill_prompt(spec, template, product)
    negative = spec.negative_prompt if spec.negative_prompt is not None else (
        template.negative_prompt if template else "")
    steps = spec.steps or (template.steps if template else DEFAULT_STEPS)
    strength = spec.strength if spec.strength is not None else (template.strength if template else DEFAULT_STRENGTH)
    if mode == "restyle" and int(steps * strength) < 1:
        raise InvalidRequest(f"with a photo, steps x strength must be at least 1 (no denoising step "
                             f"would run), got {steps} x {strength}")
    width, height = spec.width, spec.height
    if photo_size and not (width and height):  # the photo's aspect, never a stretch of it
        aspect = photo_size[0] / photo_size[1]
        if width:
            height = _side(width / aspect)
        elif height:
            width = _side(height * aspect)
        else:
            width, height = size_for_aspect(aspect, native)
    return ResolvedSpec(
        prompt=prompt, negative_prompt=negative, product=spec.product, template=spec.template,
        loras=spec.loras, num_images=spec.num_images, steps=steps,
        guidance_scale=spec.guidance_scale if spec.guidance_scale is not None else (
            template.guidance_scale if template else DEFAULT_GUIDANCE),
        width=width or native, height=height or native,
        seed=spec.seed if spec.seed is not None else secrets.randbelow(2**32), strength=strength,
        mode=mode, placement=(spec.placement or Placement()) if mode == "place" else None,
        shadow=spec.shadow, harmonize=spec.harmonize, reflection=_reflection(spec, template, mode),
        webhook=spec.webhook, webhook_events=spec.webhook_events,
    )


def _reflection(spec: JobSpec, template: Template | None, mode: str) -> float:
    """Place mode's floor reflection: the request's, else its template's (a glossy floor's), else none."""
    if mode != "place":
        return 0.0
    if spec.reflection is not None:
        return spec.reflection
    return template.reflection if template else 0.0


def _side(value: float) -> int:
    return max(MIN_SIDE, min(MAX_SIDE, int(round(value / 8)) * 8))
