"""Batches: several jobs in one request (a catalog: products x templates), admitted whole or not at all."""

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from backend.api.deps import RateLimitedClientDep, ServicesDep
from backend.models import JobSpec, JobTicket

router = APIRouter(prefix="/v1/batches", tags=["batches"])


class Batch(BaseModel):
    jobs: list[JobSpec] = Field(min_length=1, max_length=50)


class BatchTickets(BaseModel):
    jobs: list[JobTicket]


@router.post("", status_code=202, response_model=BatchTickets)
async def submit_batch(batch: Batch, services: ServicesDep, client: RateLimitedClientDep) -> BatchTickets:
    """Queue 1..50 jobs (no photos) at once: all are admitted, or none (422 naming the spec, 429, 503)."""
    try:
        jobs = await run_in_threadpool(services.jobs.submit_batch, batch.jobs)
    except Exception as e:
        services.metrics.refused.labels(type(e).__name__).inc()
        raise
    services.metrics.jobs.inc(len(jobs))
    return BatchTickets(jobs=[job.ticket() for job in jobs])
