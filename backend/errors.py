"""Domain errors inside, HTTP codes at the edge: the one place where one becomes the other."""

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from backend.storage import ObjectMissing, StorageError

log = logging.getLogger("showroom.api")


class ShowroomError(Exception):
    status_code = 400

    def __init__(self, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.detail = detail
        self.headers = headers


class Unauthorized(ShowroomError):
    """No API key, or the wrong one."""
    status_code = 401


class Forbidden(ShowroomError):
    """No API_KEY is set and the caller is not on this machine."""
    status_code = 403


class InvalidRequest(ShowroomError):
    status_code = 422


class UnknownReference(ShowroomError):
    """The body names a product, template or LoRA that the catalog does not have."""
    status_code = 422


class NotFound(ShowroomError):
    status_code = 404


class Conflict(ShowroomError):
    status_code = 409


class PayloadTooLarge(ShowroomError):
    status_code = 413


class QueueFull(ShowroomError):
    status_code = 429


class RateLimited(ShowroomError):
    status_code = 429


class Unavailable(ShowroomError):
    status_code = 503


def validation_message(errors: list[dict], whole: str = "request") -> str:
    """Pydantic's errors in one line, each where it is: `jobs[1].width: ...`, `loras[0].weight: ...` (a list
    index in brackets, as a batch's own refusals name a spec: `jobs[1]: ...`); `whole` when it is all of it."""
    messages = []
    for err in errors:
        where = ""
        for part in err.get("loc", ()):
            if isinstance(part, int):
                where += f"[{part}]"
            elif part not in ("body", "query", "path", "header"):
                where += f".{part}" if where else str(part)
        messages.append(f"{where or whole}: {str(err.get('msg', 'invalid')).removeprefix('Value error, ')}")
    return "; ".join(messages) or f"invalid {whole}"


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def _allowed_methods(request: Request) -> str:
    """Every method some route takes at this path. Starlette's 405 names only the first route that matched
    the path, and GET /v1/jobs/{id} and DELETE /v1/jobs/{id} are two routes."""
    routes = request.app.router.routes
    return ", ".join(method for method in _METHODS
                     if any(route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes))


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ShowroomError)
    async def _domain(request: Request, exc: ShowroomError):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(ObjectMissing)
    async def _gone(request: Request, exc: ObjectMissing):
        # storage answered: what the request is about was removed while it ran (a delete racing it)
        return JSONResponse({"detail": "not found: it was deleted while this request ran"}, status_code=404)

    @app.exception_handler(StorageError)
    async def _storage(request: Request, exc: StorageError):
        log.warning("storage error on %s %s: %s", request.method, request.url.path, exc)
        return JSONResponse({"detail": f"storage is unreachable, try again shortly ({exc})"}, status_code=503,
                            headers={"Retry-After": "5"})

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        return JSONResponse({"detail": validation_message(exc.errors())}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            headers["Allow"] = _allowed_methods(request)
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=headers or None)

    @app.exception_handler(RecursionError)
    async def _too_deep(request: Request, exc: RecursionError):
        # Deeply nested JSON (or any input) exhausts the parser's recursion: a client error, not a crash.
        return JSONResponse({"detail": "the request is nested too deeply to be read"}, status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal error; the server log has the details"}, status_code=500)
