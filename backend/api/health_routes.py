"""Health and metrics: no auth, so load balancers, the frontend and Prometheus can read them."""

from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import Response

from backend.api.deps import ServicesDep, authorize, client_host
from backend.errors import ShowroomError

router = APIRouter(tags=["health"])


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


@router.get("/health")
async def health(request: Request, services: ServicesDep,
                 authorization: Annotated[str | None, Header()] = None) -> dict:
    """Is the backend up, are its workers ready, how long is the queue. Never waits on storage: the
    manifest writer's last word on it (it checks every few seconds) is what counts."""
    snap = services.executor.snapshot()
    status, detail = overall(snap["workers"], services.store.storage_ok, services.store.unsaved())
    if status == "error" and snap["errors"] and _may_see_details(services, authorization, request):
        detail = snap["errors"][0]  # a worker's error text: for the key holder, not for a stranger
    return {
        "status": status,
        "model": services.settings.model_id,
        "workers": snap["workers"],
        "queue": {"pending": snap["pending"]},
        "upscaler": services.settings.active_upscaler if services.upscales else "off",
        "detail": detail,
        "native_size": services.jobs.native_size(),  # ours: the size jobs get without width and height
    }


def _may_see_details(services, authorization: str | None, request: Request) -> bool:
    try:
        authorize(services.settings.api_key, authorization, client_host(request))
        return True
    except ShowroomError:
        return False


@router.get("/metrics")
def metrics(services: ServicesDep) -> Response:
    """Prometheus text format."""
    body = services.metrics.render(services.executor.snapshot())
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")
