"""The catalog: products (from storage) and style templates (shipped)."""

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from backend.api.deps import ClientDep, ServicesDep
from backend.api.openapi import V1_ERRORS
from backend.models import Product, Template

router = APIRouter(prefix="/v1/catalog", tags=["catalog"], responses=V1_ERRORS)


class CatalogListing(BaseModel):
    """The answer of GET /v1/catalog (documentation only: the route returns its dict as it is)."""

    products: list[Product]
    templates: list[Template]
    upscaler: str
    native_size: int


@router.get("", response_model=None, responses={200: {"model": CatalogListing, "description": "the catalog"}})
async def get_catalog(services: ServicesDep, client: ClientDep) -> dict:
    """Every product and template, and which upscaler is active."""
    products = await run_in_threadpool(services.catalog.products)
    return {
        "products": [p.model_dump() for p in products],
        "templates": [t.model_dump() for t in services.catalog.templates.values()],
        "upscaler": services.settings.active_upscaler if services.upscales else "off",
        "native_size": services.jobs.native_size(),
    }
