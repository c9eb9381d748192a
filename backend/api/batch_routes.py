"""Batches: several jobs in one request (a catalog: products x templates), admitted whole or not at all."""

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field, ValidationError

from backend.api.deps import RateLimitedClientDep, ServicesDep
from backend.api.openapi import BATCH_EXAMPLE, V1_ERRORS, errors, json_body
from backend.errors import InvalidRequest, validation_message
from backend.models import JobSpec, JobTicket

router = APIRouter(prefix="/v1/batches", tags=["batches"], responses=V1_ERRORS)


class Batch(BaseModel):
    jobs: list[JobSpec] = Field(min_length=1, max_length=50)


class BatchTickets(BaseModel):
    jobs: list[JobTicket]


def parse_batch(raw: bytes) -> Batch:
    try:
        return Batch.model_validate_json(raw)
    except ValidationError as e:
        raise InvalidRequest(validation_message(e.errors(), "batch")) from None
    except RecursionError:
        raise InvalidRequest("the batch is nested too deeply to be read") from None


REFUSALS = errors(413, (422, "a spec breaks a rule: the detail names its index (jobs[i]) and the rule; nothing queued"),
                  (429, "the queue cannot take every job of the batch; nothing was queued"))


@router.post("", status_code=202, response_model=BatchTickets, openapi_extra=json_body("Batch", BATCH_EXAMPLE),
             responses=REFUSALS)
async def submit_batch(request: Request, services: ServicesDep, client: RateLimitedClientDep) -> BatchTickets:
    """Queue 1..50 jobs (no photos) at once: all are admitted, or none (422 naming the spec, 429, 503)."""
    batch = parse_batch(await request.body())
    try:
        jobs = await run_in_threadpool(services.jobs.submit_batch, batch.jobs)
    except Exception as e:
        services.metrics.refused.labels(type(e).__name__).inc()
        raise
    services.metrics.jobs.inc(len(jobs))
    return BatchTickets(jobs=[job.ticket() for job in jobs])
