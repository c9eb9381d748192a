"""The OpenAPI document, made to say what the API does: every error is `{"detail": str}`, the bodies that
routes read themselves (a JobSpec as JSON or multipart, a batch) are described, and links tell a client
(or a stateful checker) which answer's fields feed which next call."""

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema

REF = "#/components/schemas/{model}"


class ErrorDetail(BaseModel):
    """Every error, whatever its status: one sentence for a person."""

    detail: str = Field(description="what is wrong and how to fix it")


REASONS = {
    400: "the body could not be parsed as the declared media type",
    401: "missing or wrong API key: send `Authorization: Bearer <API_KEY>`",
    403: "API_KEY is not set on the backend, and the caller is not on the backend's machine",
    404: "no such resource",
    409: "the resource is not in a state that allows this",
    413: "the request body (or a file in it) is larger than the limit",
    422: "the request breaks a rule: the detail names the field and the rule",
    429: "too many requests, or the queue is full; `Retry-After` says when to try again",
    503: "storage is unreachable, or generation is unavailable; try again shortly",
}


# Headers that every answer with this status carries.
HEADERS = {
    401: {"WWW-Authenticate": {"required": True, "description": "`Bearer`: the scheme the key is sent with",
                               "schema": {"type": "string"}}},
    429: {"Retry-After": {"required": True, "description": "seconds to wait before trying again",
                          "schema": {"type": "integer", "minimum": 1}}},
}


def errors(*codes: int | tuple[int, str]) -> dict[int | str, dict[str, Any]]:
    """The `responses` of a route for these error statuses: a code, or (code, why) for a route's own reason."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        code, why = code if isinstance(code, tuple) else (code, REASONS[code])
        out[code] = {"model": ErrorDetail, "description": why} | ({"headers": HEADERS[code]} if code in HEADERS else {})
    return out


AUTH_ERRORS = errors(401, 403)
# The answers of every route under /v1: who may call, and storage that can be away.
V1_ERRORS = errors(401, 403, 503)


# What a first request can look like: each works on a fresh install (no product or template needed).
JOB_EXAMPLE = {"prompt": "a glass perfume bottle on wet black stone, soft studio light", "num_images": 1}
BATCH_EXAMPLE = {"jobs": [JOB_EXAMPLE, JOB_EXAMPLE | {"prompt": "a glass perfume bottle on a sunlit beach"}]}


def json_body(model: str, example: dict[str, Any]) -> dict[str, Any]:
    """`openapi_extra` for a route that reads its JSON body itself: the schema it expects."""
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": REF.format(model=model)}, "example": example}}}}


def job_body() -> dict[str, Any]:
    """`openapi_extra` for POST /v1/jobs: a JobSpec as JSON, or multipart with the JobSpec in part `spec`."""
    body = json_body("JobSpec", JOB_EXAMPLE)
    body["requestBody"]["content"]["multipart/form-data"] = {
        "schema": {
            "type": "object", "required": ["spec"],
            "properties": {
                "spec": {"$ref": REF.format(model="JobSpec")},
                "image": {"type": "string", "format": "binary",
                          "description": "the photo (PNG, JPEG or WebP) for `restyle` or `place` mode"},
            },
        },
        "encoding": {"spec": {"contentType": "application/json"}},
    }
    return body


# Which answer feeds which next call: (operation, status) -> {link name: (target operation, parameters)}.
_JOB = "$response.body#/id"
LINKS: dict[tuple[str, str], dict[str, tuple[str, dict[str, str]]]] = {
    ("submit_job", "202"): {
        "GetJob": ("get_job", {"job_id": _JOB}),
        "CancelJob": ("cancel_job", {"job_id": _JOB}),
        "DeleteJob": ("delete_job", {"job_id": _JOB}),
        "UpscaleImage": ("upscale_image", {"job_id": _JOB, "index": "$response.body#/images/0/index"}),
        "OlderJobs": ("list_jobs", {"before": _JOB}),
    },
    ("submit_batch", "202"): {
        "GetFirstJob": ("get_job", {"job_id": "$response.body#/jobs/0/id"}),
        "DeleteFirstJob": ("delete_job", {"job_id": "$response.body#/jobs/0/id"}),
    },
    ("cancel_job", "202"): {"GetJob": ("get_job", {"job_id": _JOB})},
    ("add_product", "201"): {
        "TrainProduct": ("train_product", {"name": "$response.body#/name"}),
        "DeleteProduct": ("delete_product", {"name": "$response.body#/name"}),
    },
    ("train_product", "202"): {"GetTraining": ("get_training", {"training_id": "$response.body#/id"})},
}


def _components(schema: dict[str, Any], bodies: tuple[type[BaseModel], ...]) -> dict[str, Any]:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    # Bodies read by the routes themselves are in no route's signature, so FastAPI does not list them.
    _, defs = models_json_schema([(model, "validation") for model in bodies], ref_template=REF)
    for name, definition in defs["$defs"].items():
        components.setdefault(name, definition)
    # FastAPI's own 422 (a list of pydantic errors) is not what this API answers: errors.py renders
    # every error, validation included, as {"detail": str}.
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    return components


def _operations(schema: dict[str, Any]):
    for path, methods in schema.get("paths", {}).items():
        for method, operation in methods.items():
            yield path, method, operation


def _errors_as_detail(schema: dict[str, Any]) -> None:
    for _, _, operation in _operations(schema):
        for response in operation.get("responses", {}).values():
            body = response.get("content", {}).get("application/json", {})
            if body.get("schema", {}).get("$ref", "").endswith("/HTTPValidationError"):
                body["schema"] = {"$ref": REF.format(model="ErrorDetail")}
                response["description"] = REASONS[422]


def _forms_without_null(schema: dict[str, Any], components: dict[str, Any]) -> None:
    """A multipart part cannot be null: an optional field is left out instead. FastAPI documents
    `X | None = None` as "X or null"; the form bodies say "X" (and a file part is then a file)."""
    for _, _, operation in _operations(schema):
        form = operation.get("requestBody", {}).get("content", {}).get("multipart/form-data", {})
        ref = form.get("schema", {}).get("$ref", "")
        body = components.get(ref.rpartition("/")[2]) if ref else None
        for name, field in (body or {}).get("properties", {}).items():
            kept = [option for option in field.get("anyOf", ()) if option.get("type") != "null"]
            if len(kept) == 1:
                field.pop("anyOf")
                body["properties"][name] = kept[0] | field


def _links(schema: dict[str, Any]) -> None:
    by_id = {operation["operationId"]: operation for _, _, operation in _operations(schema)}
    for (source, status), links in LINKS.items():
        response = by_id[source]["responses"][status]
        response["links"] = {name: {"operationId": target, "parameters": parameters}
                             for name, (target, parameters) in links.items()}


def build_openapi(app: FastAPI, bodies: tuple[type[BaseModel], ...] = ()) -> dict[str, Any]:
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = _components(schema, bodies)
    components.setdefault("ErrorDetail", ErrorDetail.model_json_schema())
    _errors_as_detail(schema)
    _forms_without_null(schema, components)
    _links(schema)
    return schema


def operation_id(route) -> str:
    """Operation ids are the routes' function names (`submit_job`), which links name."""
    return route.name


def install_openapi(app: FastAPI, bodies: tuple[type[BaseModel], ...]) -> None:
    """Serve build_openapi's document at /openapi.json (built once, on the first request); `bodies` are the
    models that routes read themselves."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app, bodies)
        return app.openapi_schema

    app.openapi = openapi
