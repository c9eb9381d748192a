"""ASGI middleware of the API: the key checked and request bodies bounded, before a byte of body is read."""

import asyncio
import logging
import re
import time

from starlette.responses import JSONResponse

from backend.errors import ShowroomError

GATED_PREFIXES = ("/v1/",)
DOCS_PATHS = ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect")
BODY_GRACE_S = 30.0           # every request body may take this long, plus ...
BODY_MIN_RATE = 16 * 1024.0   # ... a second for each 16 KB received so far
JSON_LIMIT = 1024 * 1024      # a body that is no upload: 50 specs with the longest prompts are about half this


class _KeyOutOfAccessLog(logging.Filter):
    """uvicorn's access log writes each request line as it came: a client that put the key in its URL
    (`?api_key=...`, a common habit) is refused, but its key would stay in the box's log. Each API_KEY a gate
    holds is written there as ***, as sent and however it is percent-encoded: any of its characters as itself or
    as %XX in either case (.NET writes %2f; a client may encode some characters and not others)."""

    def __init__(self):
        super().__init__()
        self.secrets: set[str] = set()
        self._pattern: re.Pattern | None = None

    def hide(self, secret: str) -> None:
        self.secrets.add(secret)
        self._pattern = re.compile("|".join(_as_sent(s) for s in sorted(self.secrets, key=len, reverse=True)))

    def filter(self, record: logging.LogRecord) -> bool:
        if self._pattern is not None and isinstance(record.args, tuple):
            record.args = tuple(self._pattern.sub("***", arg) if isinstance(arg, str) else arg
                                for arg in record.args)
        return True


def _as_sent(secret: str) -> str:
    """A pattern for `secret` in a URL: each character as itself or percent-encoded (a space also as +)."""
    def one(char: str) -> str:
        escaped = "".join("%" + "".join(f"[{d}{d.lower()}]" for d in f"{byte:02X}") for byte in char.encode())
        return f"(?:{re.escape(char)}|{escaped}{'|[+]' if char == ' ' else ''})"

    return "".join(one(char) for char in secret)


ACCESS_LOG = _KeyOutOfAccessLog()


class AuthGate:
    """Refuse /v1/* (and, with API_KEY set, the API docs) to callers without the key as soon as the
    headers are in: FastAPI would read (and spool) a whole multipart body before a route's dependency
    could say 401, so a stranger could make the box take a gigabyte for nothing."""

    def __init__(self, app, settings):
        self.app, self.settings = app, settings
        if settings.api_key is not None:  # built at start-up (lifespan), before any request is logged
            ACCESS_LOG.hide(settings.api_key.get_secret_value())
            logging.getLogger("uvicorn.access").addFilter(ACCESS_LOG)  # once: a logger keeps a filter once

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self._gated(scope["path"]):
            return await self.app(scope, receive, send)
        from backend.api.deps import authorize

        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}
        host = (scope.get("client") or ("", 0))[0]
        try:
            authorize(self.settings.api_key, headers.get("authorization") or None, host, headers)
        except ShowroomError as e:
            response = JSONResponse({"detail": e.detail}, status_code=e.status_code, headers=e.headers)
            return await response(scope, receive, send)
        return await self.app(scope, receive, send)

    def _gated(self, path: str) -> bool:
        return path.startswith(GATED_PREFIXES) or (self.settings.api_key is not None and path in DOCS_PATHS)


class BodyLimit:
    """Refuse request bodies over a limit before they are read into memory (413), and bodies that arrive
    too slowly (408): a client that trickles a byte a second would otherwise hold a request (and, for an
    upload, a spooled file) open for days. A body has `grace_s` plus one second per `min_rate` bytes
    received so far; a LoRA upload at a modest 64 KB/s always keeps ahead of that. LoRA uploads may be
    large; a multipart job is a spec and at most one photo; any other body (JSON) is at most JSON_LIMIT."""

    def __init__(self, app, default: int, uploads: int, grace_s: float = BODY_GRACE_S,
                 min_rate: float = BODY_MIN_RATE):
        self.app, self.default, self.uploads = app, default, uploads
        self.grace_s, self.min_rate = grace_s, min_rate

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if scope["path"].startswith("/v1/products"):
            limit = self.uploads
        elif headers.get(b"content-type", b"").lower().startswith(b"multipart/"):
            limit = self.default  # a spec and a photo
        else:  # JSON (or anything else): a spec, or a batch of 50, is far smaller; parsing waits on none
            limit = min(self.default, JSON_LIMIT)
        declared = headers.get(b"content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            return await self._refuse(scope, receive, send, 413, f"the request body is larger than the limit of "
                                                               f"{limit} bytes")
        started, seen, refusal, whole = time.monotonic(), 0, None, False

        async def counted():
            nonlocal seen, refusal, whole
            if refusal:
                return {"type": "http.disconnect"}
            if whole:  # the body is in; a handler waiting for the client to go away waits unbounded
                return await receive()
            left = started + self.grace_s + seen / self.min_rate - time.monotonic()
            try:
                message = await asyncio.wait_for(receive(), timeout=max(left, 0.001))
            except TimeoutError:
                refusal = (408, f"the request body arrived too slowly ({seen} bytes in "
                                f"{time.monotonic() - started:.0f} s); send it at {self.min_rate / 1024:.0f} KB/s "
                                "or more")
                raise _Refused() from None
            seen += len(message.get("body", b""))
            whole = message["type"] != "http.request" or not message.get("more_body", False)
            if seen > limit:
                refusal = (413, f"the request body is larger than the limit of {limit} bytes")
                raise _Refused()
            return message

        async def unless_refused(message):
            # A parser that catches our signal answers 400 of its own; the answer below replaces that one.
            if not refusal:
                await send(message)

        try:
            await self.app(scope, counted, unless_refused)
        except _Refused:
            pass
        if refusal:
            await self._refuse(scope, receive, send, *refusal)

    async def _refuse(self, scope, receive, send, status: int, detail: str):
        headers = {"Connection": "close"} if status == 408 else None
        await JSONResponse({"detail": detail}, status_code=status, headers=headers)(scope, receive, send)


class _Refused(Exception):
    pass
