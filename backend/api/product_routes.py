"""Products: upload a product's LoRA with its trigger words."""

from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.concurrency import run_in_threadpool

from backend.api.deps import ClientDep, ServicesDep
from backend.contract import check_name
from backend.errors import InvalidRequest, PayloadTooLarge
from backend.lora.check import normalize_lora
from backend.models import Product

router = APIRouter(prefix="/v1/products", tags=["products"])


@router.post("", status_code=201, response_model=Product)
async def add_product(
    services: ServicesDep, client: ClientDep,
    name: Annotated[str, Form(min_length=1, max_length=64)],
    trigger: Annotated[str, Form(min_length=1, max_length=200)],
    file: Annotated[UploadFile, File(description="the product's LoRA, a .safetensors file")],
    category: Annotated[str | None, Form(max_length=64)] = None,
    weight: Annotated[float, Form(ge=-4, le=4)] = 1.0,
) -> Product:
    """Add (or replace) a product whose LoRA fits MODEL_ID; it is usable in the next job, on every worker."""
    try:
        check_name("product", name)
    except ValueError as e:
        raise InvalidRequest(str(e)) from None
    if not trigger.strip():
        raise InvalidRequest("trigger must hold the words that call up the product, e.g. 'sks bottle'")
    limit = services.settings.max_lora_bytes
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(f"the LoRA file is larger than the limit of {limit} bytes")
    try:  # converted to our layout and checked against MODEL_ID's widths, before anything is stored
        lora = await run_in_threadpool(normalize_lora, data, services.settings.model_id)
    except ValueError as e:
        raise InvalidRequest(str(e)) from None
    product = Product(name=name, trigger=trigger.strip(), category=(category or "").strip() or None, weight=weight)
    return await run_in_threadpool(services.catalog.add_product, product, lora)
