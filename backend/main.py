"""The backend: `uvicorn backend.main:app --host 0.0.0.0 --port 8000`.

It owns the HTTP API and starts one generation worker process per GPU. The API process never
imports torch: the workers do.
"""

import logging
from contextlib import asynccontextmanager
from functools import partial

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from backend.api import (
    batch_routes,
    catalog_routes,
    cutout_routes,
    health_routes,
    job_routes,
    product_routes,
    training_routes,
)
from backend.api.deps import Services
from backend.api.middleware import AuthGate, BodyLimit
from backend.api.openapi import install_openapi, operation_id
from backend.config import Settings, get_settings
from backend.errors import install_error_handlers
from backend.gpu.devices import native_size_guess, visible_gpus
from backend.gpu.executor import Executor
from backend.gpu.scheduler import Scheduler
from backend.jobs.events import JobEvents
from backend.jobs.leases import Leases
from backend.jobs.manifests import TRAININGS, ManifestStore
from backend.jobs.prepare import Preparer
from backend.jobs.recovery import Recovery
from backend.jobs.service import JobService
from backend.jobs.webhooks import Webhooks
from backend.models import JobSpec
from backend.ops.idle import Activity, IdleStopper, vast_stop_action
from backend.ops.metrics import Metrics
from backend.ops.ratelimit import RateLimiter
from backend.products.catalog import Catalog
from backend.products.training import TrainingService, check_job
from backend.upscale.service import UpscaleService

log = logging.getLogger("showroom")


def start_idle_stop(settings: Settings, scheduler: Executor, activity: Activity,
                    upscales: UpscaleService | None = None) -> IdleStopper | None:
    """Opt-in: stop this vast.ai instance after IDLE_STOP_MINUTES without requests or work."""
    if settings.idle_stop_minutes <= 0:
        return None

    def busy() -> bool:
        if activity.serving() or (upscales is not None and upscales.in_flight()):
            return True
        snap = scheduler.snapshot()
        return snap["pending"] > 0 or any(w["state"] in ("busy", "starting") for w in snap["workers"])

    stop = vast_stop_action(settings.container_id, settings.container_api_key.get_secret_value(),
                            api_url=settings.vast_api_url)
    log.info("idle stop on: this instance stops after %g idle minutes", settings.idle_stop_minutes)
    limit_s = settings.idle_stop_minutes * 60
    return IdleStopper(settings.idle_stop_minutes, activity.last, stop, busy=busy).start(min(30.0, limit_s / 4))


@asynccontextmanager
async def _lifespan(app: FastAPI, settings: Settings, activity: Activity):
    """One run's services: built and started in order, closed in the order below when the server stops."""
    storage = settings.open_storage()
    metrics = Metrics()
    secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
    webhooks = Webhooks(storage, secret, settings.webhook_allowed_hosts, settings.webhook_backoff_s).start()
    store, catalog_ = ManifestStore(storage, on_change=webhooks.on_change).start(), Catalog(storage)
    training_store = ManifestStore(storage, kind=TRAININGS).start()
    workers = settings.worker_count(visible_gpus(settings.cuda_visible_devices))
    events = JobEvents(store, metrics.on_event)
    if settings.executor == "celery":  # GPU nodes anywhere pull the work from BROKER_URL (docs/NODES.md)
        from backend.gpu.celery_executor import CeleryExecutor

        executor = CeleryExecutor(settings, storage, on_event=events)
    else:
        executor = Scheduler(settings, storage, workers, on_event=events)
    preparer = Preparer(storage, settings.bg_removal_model)
    leases = Leases(store.storage)  # this backend among others on the bucket: who runs which job
    job_service = JobService(settings, catalog_, store, executor, native_size_guess(settings.model_id), preparer,
                             runs_elsewhere=leases.runs_elsewhere)
    trainings = TrainingService(settings, catalog_, training_store, executor, job_service.native_size,
                                start_check=partial(check_job, job_service, catalog_))
    events.on_training = trainings.on_event
    upscales = UpscaleService(settings, executor, store) if settings.active_upscaler != "off" else None
    app.state.services = Services(settings, storage, catalog_, executor, store, job_service, metrics,
                                  RateLimiter(settings.rate_limit_per_minute), upscales, preparer, trainings)
    log.info("storage %s, model %s, %s, upscaler %s", storage.url, settings.model_id,
             f"{workers} workers" if settings.executor == "local" else "GPU nodes via the broker",
             settings.active_upscaler)
    executor.start()
    recovery = Recovery(store, executor, job_service, upscales, trainings=trainings, leases=leases).start()
    idle = start_idle_stop(settings, executor, activity, upscales)
    try:
        yield
    finally:
        recovery.close()
        if idle:
            idle.close()
        if upscales:
            upscales.close()
        preparer.close()
        executor.stop()
        trainings.close()
        store.close()
        training_store.close()
        webhooks.close()


def _counting_activity(activity: Activity):
    """Middleware: requests to /v1/ are work that keeps a paid box from its idle stop (IDLE_STOP_MINUTES)."""
    async def count_activity(request, call_next):
        # Health checks and metrics scrapes are not work, nor are strangers knocking on a public IP:
        # neither may keep a paid box from its idle stop. A request still being served keeps it up.
        if not request.url.path.startswith("/v1/"):
            return await call_next(request)
        activity.begin()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            activity.end(touch=status not in (401, 403))
    return count_activity


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # it logs whole URLs: a webhook's may hold a token
    activity = Activity()
    app = FastAPI(title="Showroom", version="0.1.0", lifespan=partial(_lifespan, settings=settings, activity=activity),
                  generate_unique_id_function=operation_id,
                  description="Pictures of a real product in any scene. See README.md.")
    install_error_handlers(app)
    app.middleware("http")(_counting_activity(activity))
    for module in (health_routes, catalog_routes, product_routes, training_routes, cutout_routes, job_routes,
                   batch_routes):
        app.include_router(module.router)
    install_openapi(app, bodies=(JobSpec, batch_routes.Batch))
    app.add_middleware(BodyLimit, default=settings.max_upload_bytes + 1024 * 1024,
                       uploads=settings.max_lora_bytes + 1024 * 1024)
    app.add_middleware(AuthGate, settings=settings)  # outside BodyLimit: runs before any body is read
    if settings.cors_origins:  # outermost, so a browser's preflight is answered without the key
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins,
                           allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["Authorization", "Content-Type", "Idempotency-Key"])
    return app


def __getattr__(name: str):
    # `backend.main:app` is built on first access, so importing this module reads no settings.
    if name == "app":
        globals()["app"] = create_app()
        return globals()["app"]
    raise AttributeError(name)
