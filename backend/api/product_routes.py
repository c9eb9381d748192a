"""Products: a name, trigger words, and a LoRA file, a packshot photo, or both; and deleting one."""

import threading
from typing import Annotated

from fastapi import APIRouter, File, Form, Path, Response, UploadFile
from fastapi.concurrency import run_in_threadpool

from backend.api.cutout_routes import read_photo
from backend.api.deps import ClientDep, RateLimitedClientDep, ServicesDep
from backend.api.openapi import V1_ERRORS, errors
from backend.contract import NAME_RE, NAME_RULE, check_name
from backend.errors import InvalidRequest, NotFound, PayloadTooLarge, RateLimited, UnknownReference
from backend.jobs.prepare import png_bytes
from backend.lora.check import normalize_lora
from backend.models import Product
from backend.products.training import MAX_PHOTOS, normalize_photos

router = APIRouter(prefix="/v1/products", tags=["products"], responses=V1_ERRORS)
# The name's rule, documented; product_name() enforces it with a message that states it.
ProductName = Path(description=f"the product's name: {NAME_RULE}", json_schema_extra={"pattern": NAME_RE.pattern})
# A LoRA's conversion holds about 2.6 times the file in memory: two at a time, the rest are told to retry.
CONVERSIONS = threading.BoundedSemaphore(2)


def product_name(name: str) -> str:
    try:
        return check_name("product", name)
    except ValueError as e:
        raise InvalidRequest(str(e)) from None


@router.post("", status_code=201, response_model=Product,
             responses=errors(400, (409, "another product's name differs only in case"), 413, 422, 429))
async def add_product(
    services: ServicesDep, client: RateLimitedClientDep,
    name: Annotated[str, Form(min_length=1, max_length=64, json_schema_extra={"pattern": NAME_RE.pattern})],
    trigger: Annotated[str, Form(min_length=1, max_length=200)],
    file: Annotated[UploadFile | None, File(description="the product's LoRA, a .safetensors file")] = None,
    photo: Annotated[UploadFile | None, File(description="a packshot: cut out as in place mode")] = None,
    photos: Annotated[list[UploadFile] | None, File(
        description=f"up to {MAX_PHOTOS} photos of the product, kept with it (products/<name>/photos/<n>.png, "
                    "checked and normalised as a training's) to teach it from later; they replace those it kept",
        json_schema_extra={"maxItems": MAX_PHOTOS})] = None,
    category: Annotated[str | None, Form(max_length=64)] = None,
    weight: Annotated[float, Form(ge=-4, le=4)] = 1.0,
) -> Product:
    """Add (or replace) a product: its LoRA (checked against MODEL_ID), its packshot, or both, and the photos to
    teach it from. Usable in the next job, on every worker; with a packshot, `place` jobs need no upload."""
    product_name(name)
    if not trigger.strip():
        raise InvalidRequest("trigger must hold the words that call up the product, e.g. 'sks bottle'")
    if file is None and photo is None:
        raise InvalidRequest("send the product's LoRA as part 'file', a photo of it as part 'photo', or both")
    lora = packshot = None
    if file is not None:
        limit = services.settings.max_lora_bytes
        data = await file.read(limit + 1)
        if len(data) > limit:
            raise PayloadTooLarge(f"the LoRA file is larger than the limit of {limit} bytes")
        if not CONVERSIONS.acquire(blocking=False):
            raise RateLimited("two LoRA uploads are being converted already; try again in a minute",
                              headers={"Retry-After": "30"})
        try:  # converted to our layout and checked against MODEL_ID's widths, before anything is stored
            lora = await run_in_threadpool(normalize_lora, data, services.settings.model_id)
        except ValueError as e:
            raise InvalidRequest(str(e)) from None
        finally:
            CONVERSIONS.release()
    kept = await kept_photos(photos, services) if photos else None  # checked before the cut-out's seconds
    if photo is not None:
        try:  # cut out before anything is stored: a photo with no product found changes nothing
            png = await read_photo(photo, services)
            packshot = png_bytes(await run_in_threadpool(services.preparer.cut_out_now, png))
        except ValueError as e:
            raise InvalidRequest(str(e)) from None
    product = Product(name=name, trigger=trigger.strip(), category=(category or "").strip() or None, weight=weight)
    return await run_in_threadpool(services.catalog.add_product, product, lora, packshot, kept)


async def kept_photos(photos: list[UploadFile], services) -> list[bytes]:
    """The photos to keep with a product, read and normalised as a training's, before anything is stored."""
    if len(photos) > MAX_PHOTOS:
        raise InvalidRequest(f"at most {MAX_PHOTOS} photos are kept with a product (a training's most), "
                             f"got {len(photos)}")
    limit, data = services.settings.max_upload_bytes, []
    for n, upload in enumerate(photos, start=1):
        content = await upload.read(limit + 1)
        if len(content) > limit:
            raise PayloadTooLarge(f"photo {n} ({upload.filename!r}) is larger than the limit of {limit} bytes")
        data.append(content)
    return await run_in_threadpool(normalize_photos, data, services.settings)


@router.delete("/{name}", status_code=204, responses=errors((404, "no such product"), 422))
async def delete_product(name: Annotated[str, ProductName], services: ServicesDep, client: ClientDep) -> Response:
    """Remove a product and its files, and stop its training; jobs already made keep their images."""
    try:
        await run_in_threadpool(services.catalog.delete, product_name(name))
    except UnknownReference:
        raise NotFound(f"no product {name!r}") from None
    if services.trainings is not None:
        await run_in_threadpool(services.trainings.product_deleted, name)
    return Response(status_code=204)
