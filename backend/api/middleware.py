"""ASGI middleware of the API: the key checked and request bodies bounded, before a byte of body is read."""

from starlette.responses import JSONResponse

from backend.errors import ShowroomError

GATED_PREFIXES = ("/v1/",)
DOCS_PATHS = ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect")


class AuthGate:
    """Refuse /v1/* (and, with API_KEY set, the API docs) to callers without the key as soon as the
    headers are in: FastAPI would read (and spool) a whole multipart body before a route's dependency
    could say 401, so a stranger could make the box take a gigabyte for nothing."""

    def __init__(self, app, settings):
        self.app, self.settings = app, settings

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self._gated(scope["path"]):
            return await self.app(scope, receive, send)
        from backend.api.deps import authorize

        headers = dict(scope.get("headers") or [])
        authorization = headers.get(b"authorization", b"").decode("latin-1") or None
        host = (scope.get("client") or ("", 0))[0]
        try:
            authorize(self.settings.api_key, authorization, host)
        except ShowroomError as e:
            response = JSONResponse({"detail": e.detail}, status_code=e.status_code, headers=e.headers)
            return await response(scope, receive, send)
        return await self.app(scope, receive, send)

    def _gated(self, path: str) -> bool:
        return path.startswith(GATED_PREFIXES) or (self.settings.api_key is not None and path in DOCS_PATHS)


class BodyLimit:
    """Refuse request bodies over a limit before they are read into memory (413). LoRA uploads
    may be large; everything else is a spec and at most one photo."""

    def __init__(self, app, default: int, uploads: int):
        self.app, self.default, self.uploads = app, default, uploads

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.uploads if scope["path"].startswith("/v1/products") else self.default
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            return await self._refuse(scope, receive, send, limit)
        seen, exceeded = 0, False

        async def counted():
            nonlocal seen, exceeded
            if exceeded:
                return {"type": "http.disconnect"}
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                exceeded = True
                raise _TooLarge()
            return message

        async def unless_exceeded(message):
            # A parser that catches our signal answers 400 of its own; the 413 below replaces that answer.
            if not exceeded:
                await send(message)

        try:
            await self.app(scope, counted, unless_exceeded)
        except _TooLarge:
            pass
        if exceeded:
            await self._refuse(scope, receive, send, limit)

    async def _refuse(self, scope, receive, send, limit: int):
        response = JSONResponse({"detail": f"the request body is larger than the limit of {limit} bytes"},
                                status_code=413)
        await response(scope, receive, send)


class _TooLarge(Exception):
    pass
