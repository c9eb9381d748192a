"""Health and metrics: no auth, so load balancers, the frontend and Prometheus can read them."""

from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel

from backend.api.deps import ServicesDep, authorize, client_host
from backend.errors import ShowroomError
from backend.gpu.batches import public_model_name

router = APIRouter(tags=["health"])


class Worker(BaseModel):
    id: int | str
    device: str
    state: Literal["starting", "ready", "busy", "dead"]


class Queue(BaseModel):
    pending: int


class Health(BaseModel):
    """The contract's answer of GET /health (documentation only: the route returns its dict as it is)."""

    status: Literal["starting", "ok", "degraded", "error"]
    model: str
    workers: list[Worker]
    queue: Queue
    upscaler: str
    detail: str | None
    native_size: int  # ours: the size jobs get without width and height


def overall(workers: list[dict], storage_ok: bool, unsaved: int) -> tuple[str, str | None]:
    states = [w["state"] for w in workers]
    working = sum(s in ("ready", "busy") for s in states)
    if not storage_ok:
        return "degraded", "storage is unreachable; results are kept and written when it returns"
    if unsaved:
        return "degraded", f"{unsaved} job manifests wait to be written to storage"
    if working == 0 and "starting" in states:
        return "starting", "loading the model"
    if working == 0:
        return "error", "no worker is running"
    if working < len(states):
        return "degraded", f"{working} of {len(states)} workers are up"
    return "ok", None


@router.get("/health", response_model=None, responses={200: {"model": Health, "description": "the backend's state"}})
async def health(request: Request, services: ServicesDep) -> dict:
    """Is the backend up, are its workers ready, how long is the queue. Never waits on storage: the
    manifest writer's last word on it (it checks every few seconds) is what counts."""
    snap = services.executor.snapshot()
    status, detail = overall(snap["workers"], services.store.storage_ok, services.store.unsaved())
    insider = _may_see_details(services, request)
    if status == "error" and snap["errors"] and insider:
        detail = snap["errors"][0]  # a worker's error text: for the key holder, not for a stranger
    return {
        "status": status,
        # a local model folder by its name only, for a stranger: the server's paths are not theirs to read
        "model": services.settings.model_id if insider else public_model_name(services.settings.model_id),
        "workers": snap["workers"],
        "queue": {"pending": snap["pending"]},
        "upscaler": services.settings.active_upscaler if services.upscales else "off",
        "detail": detail,
        "native_size": services.jobs.native_size(),  # ours: the size jobs get without width and height
    }


def _may_see_details(services, request: Request) -> bool:
    try:  # the key is optional here: a worker's error text is shown to its holder, nothing is refused
        authorize(services.settings.api_key, request.headers.get("authorization"), client_host(request),
                  request.headers)
        return True
    except ShowroomError:
        return False


@router.get("/metrics", response_class=Response, responses={200: {
    "description": "the backend's metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}})
def metrics(services: ServicesDep) -> Response:
    """Prometheus text format."""
    body = services.metrics.render(services.executor.snapshot())
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")
