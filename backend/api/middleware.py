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
