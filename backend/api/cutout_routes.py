"""Cut-outs: see what `place` mode will keep of a photo before paying for GPU time."""

from typing import Annotated

from fastapi import APIRouter, File, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from backend.api.deps import RateLimitedClientDep, ServicesDep
from backend.api.openapi import V1_ERRORS, errors
from backend.errors import InvalidRequest, PayloadTooLarge
from backend.images import BadImage, normalize_photo
from backend.jobs.prepare import png_bytes

router = APIRouter(prefix="/v1/cutouts", tags=["cutouts"], responses=V1_ERRORS)


async def read_photo(photo: UploadFile, services) -> bytes:
    """An uploaded photo, size-checked and normalised (upright, no EXIF, transparency kept)."""
    limit = services.settings.max_upload_bytes
    data = await photo.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(f"the photo is larger than the limit of {limit} bytes")
    try:  # decoding, colour conversion and PNG encoding take a second on a large photo: off the event loop
        png, _ = await run_in_threadpool(normalize_photo, data, max_bytes=limit,
                                         max_pixels=services.settings.max_upload_pixels)
    except BadImage as e:
        raise InvalidRequest(str(e)) from None
    return png


@router.post("", response_class=Response, responses={200: {
    "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
    "description": "the product, RGBA, trimmed"}} | errors(400, 413, 422, 429))
async def cut_out(services: ServicesDep, client: RateLimitedClientDep,
                  photo: Annotated[UploadFile, File(description="a photo of the product (PNG, JPEG or WebP)")]):
    """The product cut out of a photo, exactly as a `place` job would keep it (PNG with transparency)."""
    png = await read_photo(photo, services)
    try:
        cutout = await run_in_threadpool(services.preparer.cut_out_now, png)
    except ValueError as e:  # NothingFound among them: the reason goes back to the user
        raise InvalidRequest(str(e)) from None
    return Response(png_bytes(cutout), media_type="image/png")
