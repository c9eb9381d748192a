"""ASGI middleware of the API: request bodies bounded before they are read."""

from starlette.responses import JSONResponse


class BodyLimit:
    """Refuse request bodies over a limit before they are read into memory (413). LoRA uploads
    may be large; everything else is a spec and at most one photo."""

    def __init__(self, app, default: int, uploads: int):
        self.app, self.default, self.uploads = app, default, uploads

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.uploads if scope["path"].rstrip("/") == "/v1/products" else self.default
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            return await self._refuse(scope, receive, send, limit)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _TooLarge()
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await self._refuse(scope, receive, send, limit)

    async def _refuse(self, scope, receive, send, limit: int):
        response = JSONResponse({"detail": f"the request body is larger than the limit of {limit} bytes"},
                                status_code=413)
        await response(scope, receive, send)


class _TooLarge(Exception):
    pass
