"""Trainings: teach Showroom a product from its photos; follow the training."""

from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.concurrency import run_in_threadpool

from backend.api.deps import ClientDep, RateLimitedClientDep, ServicesDep
from backend.contract import is_job_id
from backend.errors import NotFound, PayloadTooLarge
from backend.models import TrainingManifest
from backend.products.training import MAX_PHOTOS

router = APIRouter(tags=["trainings"])


@router.post("/v1/products/{name}/training", status_code=202)
async def train_product(
    name: str, services: ServicesDep, client: RateLimitedClientDep,
    photos: Annotated[list[UploadFile], File(description="2 to 40 photos of the product")],
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


@router.get("/v1/trainings/{training_id}", response_model=TrainingManifest)
async def get_training(training_id: str, services: ServicesDep, client: ClientDep) -> TrainingManifest:
    """One training's manifest: status, progress, loss."""
    if not is_job_id(training_id):
        raise NotFound(f"no training {training_id!r}: training ids are 32 lowercase hex characters")
    return await run_in_threadpool(services.trainings.get, training_id)
