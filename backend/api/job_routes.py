"""Jobs: submit (JSON, or multipart with a photo), list, get, cancel, upscale one image."""

import json
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from backend.api.deps import ClientDep, RateLimitedClientDep, ServicesDep
from backend.api.middleware import JSON_LIMIT
from backend.api.openapi import V1_ERRORS, errors, job_body
from backend.contract import JOB_ID_RE, is_job_id
from backend.errors import InvalidRequest, PayloadTooLarge, Unavailable, validation_message
from backend.models import JobManifest, JobSpec, JobTicket
from backend.upscale.service import upscalable_image

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=V1_ERRORS)
# Documented; _job_id() answers 404 for anything else, as for an id that does not exist.
JobId = Path(description="a job id: 32 lowercase hex characters", json_schema_extra={"pattern": JOB_ID_RE.pattern})
NO_JOB = (404, "no such job")


class UpscaleTicket(BaseModel):
    key: str
    status: Literal["queued"]


def parse_spec(raw: bytes | str) -> JobSpec:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidRequest(f"the job spec is not valid JSON: {e}") from None
    except RecursionError:
        raise InvalidRequest("the job spec is nested too deeply to be a JobSpec") from None
    if not isinstance(data, dict):
        raise InvalidRequest("the job spec must be a JSON object")
    try:
        return JobSpec.model_validate(data)
    except ValidationError as e:
        raise InvalidRequest(validation_message(e.errors(), "spec")) from None


async def read_submission(request: Request, max_photo: int) -> tuple[JobSpec, bytes | None]:
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        try:
            form = await request.form(max_files=2, max_fields=4)  # the spec may come as a file too (curl -F spec=@)
        except Exception as e:
            raise InvalidRequest(f"the multipart body could not be read: {e}") from None
        spec_part, image_part = form.get("spec"), form.get("image")
        if spec_part is None:
            raise InvalidRequest("the multipart body needs a part 'spec' holding the JobSpec as JSON")
        if isinstance(spec_part, UploadFile):
            raw = await spec_part.read(JSON_LIMIT + 1)
            if len(raw) > JSON_LIMIT:
                raise PayloadTooLarge(f"the part 'spec' is larger than the limit of {JSON_LIMIT} bytes")
            spec_part = raw
        spec = parse_spec(spec_part)
        if image_part is None:
            return spec, None
        if not isinstance(image_part, UploadFile):
            raise InvalidRequest("the part 'image' must be a file upload")
        photo = await image_part.read(max_photo + 1)
        if len(photo) > max_photo:
            raise PayloadTooLarge(f"the photo is larger than the limit of {max_photo} bytes")
        return spec, photo
    if content_type and not content_type.startswith("application/json"):
        raise InvalidRequest(f"send the JobSpec as application/json, or multipart/form-data with parts "
                             f"'spec' and 'image'; got {content_type!r}")
    return parse_spec(await request.body()), None


@router.post("", status_code=202, response_model=JobTicket, openapi_extra=job_body(),
             responses=errors(413, 422, 429))
async def submit_job(request: Request, services: ServicesDep, client: RateLimitedClientDep,
                     idempotency_key: Annotated[str | None, Header(
                         max_length=255, description="a retry with the same key answers the first submission's "
                                                     "ticket instead of starting a second job; the same key with "
                                                     "another spec or photo is 422")] = None) -> JobTicket:
    """Queue a job and answer at once with the keys its images will have."""
    spec, photo = await read_submission(request, services.settings.max_upload_bytes)
    try:
        job = await run_in_threadpool(services.jobs.submit, spec, photo, idempotency_key, client)
    except Exception as e:
        services.metrics.refused.labels(type(e).__name__).inc()
        raise
    services.metrics.jobs.inc()
    return job.ticket()


@router.get("", response_model=dict[str, list[JobManifest]],
            responses=errors((404, "no job with the id `before`"), 422))
async def list_jobs(services: ServicesDep, client: ClientDep,
                    limit: Annotated[int, Query(ge=1, le=200)] = 20,
                    before: Annotated[str | None, Query(description="only jobs older than this id", json_schema_extra={
                        "pattern": JOB_ID_RE.pattern})] = None) -> dict:
    """Recent jobs, newest first; `before` pages back through older ones."""
    if before is not None:
        _job_id(before)
    return {"jobs": await run_in_threadpool(services.jobs.list, limit, before)}


def _job_id(job_id: str) -> str:
    if not is_job_id(job_id):
        from backend.errors import NotFound

        raise NotFound(f"no job {job_id!r}: job ids are 32 lowercase hex characters")
    return job_id


@router.get("/{job_id}", response_model=JobManifest, responses=errors(NO_JOB))
async def get_job(job_id: Annotated[str, JobId], services: ServicesDep, client: ClientDep) -> JobManifest:
    """One job's manifest."""
    return await run_in_threadpool(services.jobs.get, _job_id(job_id))


ELSEWHERE = (409, "the job runs on another backend that shares this storage: cancel or delete it there")


@router.post("/{job_id}/cancel", status_code=202, response_model=JobManifest, responses=errors(NO_JOB, ELSEWHERE))
async def cancel_job(job_id: Annotated[str, JobId], services: ServicesDep, client: ClientDep) -> JobManifest:
    """Cancel the queued images of a job and interrupt the running ones."""
    return await run_in_threadpool(services.jobs.cancel, _job_id(job_id))


@router.delete("/{job_id}", status_code=204, responses=errors(NO_JOB, ELSEWHERE))
async def delete_job(job_id: Annotated[str, JobId], services: ServicesDep, client: ClientDep) -> Response:
    """Cancel the job if it runs and remove every object it has in storage."""
    await run_in_threadpool(services.jobs.delete, _job_id(job_id))
    return Response(status_code=204)


UPSCALE_ANSWERS = {202: {"model": UpscaleTicket, "description": "the upscale is queued, under way or done"}} | errors(
    (404, "no such job, or no such image in it"), (409, "the image has not succeeded (yet)"), 422, 429)


@router.post("/{job_id}/images/{index}/upscale", status_code=202, response_model=None, responses=UPSCALE_ANSWERS)
async def upscale_image(job_id: Annotated[str, JobId], index: int, services: ServicesDep,
                        client: RateLimitedClientDep) -> dict:
    """Queue a 4x upscale of one succeeded image."""
    job_id = _job_id(job_id)
    if services.upscales is None:  # a wrong job or image is 404 or 409 whatever the upscaler, as when it is on
        upscalable_image(await run_in_threadpool(services.jobs.get, job_id), index)
        raise Unavailable("upscaler is off: set UPSCALER=replicate with REPLICATE_API_TOKEN, or UPSCALER=local")
    key = await run_in_threadpool(services.upscales.request, job_id, index)
    # The contract's answer whether this request started it or found it under way or done: the
    # manifest's `upscale` record says how far it is.
    return {"key": key, "status": "queued"}
