"""Trainings: teach Showroom a product from its photos; follow the training."""

from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Path, UploadFile
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from backend.api.deps import ClientDep, RateLimitedClientDep, ServicesDep
from backend.api.openapi import V1_ERRORS, errors
from backend.api.product_routes import ProductName
from backend.contract import JOB_ID_RE, is_job_id
from backend.errors import NotFound, PayloadTooLarge
from backend.models import TrainingManifest
from backend.products.training import MAX_PHOTOS, MIN_PHOTOS

router = APIRouter(tags=["trainings"], responses=V1_ERRORS)


class TrainingTicket(BaseModel):
    id: str
    status: Literal["queued"]
    manifest_key: str


@router.post("/v1/products/{name}/training", status_code=202, response_model=None,
             responses={202: {"model": TrainingTicket, "description": "the training is queued"}}
             | errors(400, (404, "no such product"), 413, 422, 429))
async def train_product(
    name: Annotated[str, ProductName], services: ServicesDep, client: RateLimitedClientDep,
    photos: Annotated[list[UploadFile], File(description=f"{MIN_PHOTOS} to {MAX_PHOTOS} photos of the product",
                                             json_schema_extra={"minItems": MIN_PHOTOS, "maxItems": MAX_PHOTOS})],
    steps: Annotated[int | None, Form(ge=10, le=5000)] = None,
    rank: Annotated[int | None, Form(ge=1, le=128)] = None,
) -> dict:
    """Queue a LoRA training of the product on a GPU; GET /v1/trainings/{id} follows it."""
    limit = services.settings.max_upload_bytes
    data = []
    for upload in photos[:MAX_PHOTOS + 1]:
        content = await upload.read(limit + 1)
        if len(content) > limit:
            raise PayloadTooLarge(f"photo {upload.filename!r} is larger than the limit of {limit} bytes")
        data.append(content)
    data += [b""] * max(0, len(photos) - len(data))  # counted, not read: a request past 40 is refused whole
    training = await run_in_threadpool(services.trainings.submit, name, data, steps, rank)
    return {"id": training.id, "status": "queued", "manifest_key": training.manifest_key}


TrainingId = Path(json_schema_extra={"pattern": JOB_ID_RE.pattern})


@router.get("/v1/trainings/{training_id}", response_model=TrainingManifest, responses=errors((404, "no such training")))
async def get_training(training_id: Annotated[str, TrainingId], services: ServicesDep,
                       client: ClientDep) -> TrainingManifest:
    """One training's manifest: status, progress, loss."""
    return await run_in_threadpool(services.trainings.get, _training_id(training_id))


@router.post("/v1/trainings/{training_id}/cancel", status_code=202, response_model=TrainingManifest,
             responses=errors((404, "no such training"),
                              (409, "the training runs on another backend that shares this storage")))
async def cancel_training(training_id: Annotated[str, TrainingId], services: ServicesDep,
                          client: ClientDep) -> TrainingManifest:
    """Stop a training: it ends canceled, its GPU is free at its next step, the product stays as it was."""
    return await run_in_threadpool(services.trainings.cancel, _training_id(training_id))


def _training_id(training_id: str) -> str:
    if not is_job_id(training_id):
        raise NotFound(f"no training {training_id!r}: training ids are 32 lowercase hex characters")
    return training_id
