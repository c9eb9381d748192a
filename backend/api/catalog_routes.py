"""The catalog: products (from storage) and style templates (shipped)."""

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from backend.api.deps import ClientDep, ServicesDep

router = APIRouter(prefix="/v1/catalog", tags=["catalog"])


@router.get("")
async def get_catalog(services: ServicesDep, client: ClientDep) -> dict:
    """Every product and template, and which upscaler is active."""
    products = await run_in_threadpool(services.catalog.products)
    return {
        "products": [p.model_dump() for p in products],
        "templates": [t.model_dump() for t in services.catalog.templates.values()],
        "upscaler": services.settings.active_upscaler if services.upscales else "off",
        "native_size": services.jobs.native_size(),
    }
