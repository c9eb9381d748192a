"""backend/api/middleware.py BodyLimit: bodies over the limit refused with 413 JSON, declared or streamed."""

import asyncio
import logging
from typing import Annotated

import pytest
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.testclient import TestClient

from backend.api.middleware import JSON_LIMIT, BodyLimit
from backend.errors import install_error_handlers

DEFAULT, UPLOADS = 100, 1000


def make_app(**limits) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/v1/jobs")
    async def raw(request: Request):
        return {"received": len(await request.body())}

    @app.post("/v1/products")
    async def upload(name: Annotated[str, Form()], file: Annotated[UploadFile, File()]):
        return {"name": name, "received": len(await file.read())}

    @app.post("/v1/products/{name}/training")
    async def training(name: str, request: Request):
        return {"received": len(await request.body())}

    app.add_middleware(BodyLimit, default=DEFAULT, uploads=UPLOADS, **limits)
    return app


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(make_app())


def streamed(data: bytes):
    """A body sent without Content-Length (Transfer-Encoding: chunked)."""
    yield data


def refused(limit: int) -> dict:
    return {"detail": f"the request body is larger than the limit of {limit} bytes"}


def multipart(size: int) -> tuple[bytes, str]:
    boundary = "unit-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nbottle\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.safetensors\"\r\n\r\n"
            ).encode() + b"x" * size + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def test_body_limit_declared_length_over_limit_is_413_json(client):
    r = client.post("/v1/jobs", content=b"x" * (DEFAULT + 1))
    assert r.status_code == 413
    assert r.headers["content-type"] == "application/json"
    assert r.json() == refused(DEFAULT)


def test_body_limit_declared_length_at_limit_passes(client):
    r = client.post("/v1/jobs", content=b"x" * DEFAULT)
    assert (r.status_code, r.json()) == (200, {"received": DEFAULT})


def test_body_limit_streamed_body_over_limit_is_413(client):
    r = client.post("/v1/jobs", content=streamed(b"x" * (DEFAULT + 1)))
    assert "content-length" not in r.request.headers
    assert (r.status_code, r.json()) == (413, refused(DEFAULT))


def test_body_limit_streamed_body_under_limit_passes(client):
    r = client.post("/v1/jobs", content=streamed(b"x" * 60))
    assert (r.status_code, r.json()) == (200, {"received": 60})


def test_body_limit_uploads_path_has_the_larger_limit(client):
    body, content_type = multipart(500)
    assert DEFAULT < len(body) <= UPLOADS
    r = client.post("/v1/products", content=body, headers={"content-type": content_type})
    assert (r.status_code, r.json()) == (200, {"name": "bottle", "received": 500})


def test_body_limit_uploads_path_with_trailing_slash_has_the_larger_limit(client):
    r = client.post("/v1/products/", content=b"x" * (UPLOADS + 1))
    assert (r.status_code, r.json()) == (413, refused(UPLOADS))


def test_body_limit_uploads_path_over_its_limit_is_413(client):
    body, content_type = multipart(UPLOADS)
    r = client.post("/v1/products", content=body, headers={"content-type": content_type})
    assert (r.status_code, r.json()) == (413, refused(UPLOADS))


def test_body_limit_training_photos_have_the_uploads_limit(client):
    """2..40 photos in one training request: the larger limit applies, as to product uploads."""
    assert client.post("/v1/products/bottle/training", content=b"x" * (DEFAULT + 1)).status_code == 200
    r = client.post("/v1/products/bottle/training", content=b"x" * (UPLOADS + 1))
    assert (r.status_code, r.json()) == (413, refused(UPLOADS))


def test_body_limit_streamed_upload_over_limit_is_413_through_form_parsing(client):
    body, content_type = multipart(UPLOADS)
    r = client.post("/v1/products", content=streamed(body), headers={"content-type": content_type})
    assert (r.status_code, r.json()) == (413, refused(UPLOADS))


# ----- straight ASGI calls: several body messages, other scope types -----
def call(app, scope: dict, messages: list[dict]) -> list[dict]:
    sent = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    asyncio.run(BodyLimit(app, default=DEFAULT, uploads=UPLOADS)(scope, receive, send))
    return sent


async def echo_length(scope, receive, send):
    total, more = 0, True
    while more:
        message = await receive()
        total += len(message.get("body", b""))
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(total).encode()})


HTTP = {"type": "http", "method": "POST", "path": "/v1/jobs", "headers": [], "query_string": b""}


def test_body_limit_counts_across_body_messages():
    chunks = [{"type": "http.request", "body": b"x" * 40, "more_body": True} for _ in range(3)]
    sent = call(echo_length, dict(HTTP), chunks + [{"type": "http.request", "body": b""}])
    assert sent[0]["status"] == 413
    assert b"limit of 100 bytes" in sent[1]["body"]


def test_body_limit_passes_every_chunk_under_the_limit():
    chunks = [{"type": "http.request", "body": b"x" * 40, "more_body": True},
              {"type": "http.request", "body": b"x" * 60, "more_body": False}]
    sent = call(echo_length, dict(HTTP), chunks)
    assert (sent[0]["status"], sent[1]["body"]) == (200, b"100")


def test_body_limit_ignores_non_http_scopes():
    seen = []

    async def app(scope, receive, send):
        seen.append(scope["type"])

    call(app, {"type": "lifespan"}, [])
    assert seen == ["lifespan"]


def trickled_request(app, chunks: list[bytes], pause_s: float) -> tuple[int, dict]:
    """Drive the ASGI app directly: the body arrives in `chunks`, `pause_s` apart, as a slow client sends
    it; after the last chunk sent (even one that says more follows) the client goes quiet."""
    import json

    sent, answer = list(chunks), {"status": None, "body": b""}

    async def receive():
        if not sent:
            await asyncio.sleep(3600)
        await asyncio.sleep(pause_s)
        chunk = sent.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": chunk.endswith(b"...") or bool(sent)}

    async def send(message):
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
        elif message["type"] == "http.response.body":
            answer["body"] += message.get("body", b"")

    scope = {"type": "http", "method": "POST", "path": "/v1/jobs", "raw_path": b"/v1/jobs", "query_string": b"",
             "headers": [(b"content-type", b"application/octet-stream")], "client": ("127.0.0.1", 1),
             "server": ("127.0.0.1", 80), "scheme": "http", "http_version": "1.1", "root_path": ""}
    asyncio.run(asyncio.wait_for(app(scope, receive, send), timeout=10))
    return answer["status"], json.loads(answer["body"] or b"{}")


def test_a_body_that_trickles_in_too_slowly_is_408_json():
    # a byte every 0.05 s (20 B/s) against 100 B/s: behind after about 7 bytes
    status, body = trickled_request(make_app(grace_s=0.3, min_rate=100), [b"x"] * 50, pause_s=0.05)
    assert status == 408, body
    assert "arrived too slowly" in body["detail"]


def test_a_body_that_stops_half_way_is_408_not_a_hang():
    status, body = trickled_request(make_app(grace_s=0.3, min_rate=1000), [b"half of it..."], pause_s=0)
    assert status == 408, body


def test_a_body_that_keeps_ahead_of_the_rate_is_taken_however_long_it_takes():
    # 45 chunks of 2 bytes, 0.02 s apart: 0.9 s in all, past the 0.3 s grace, but at 100 B/s > 50 B/s
    status, body = trickled_request(make_app(grace_s=0.3, min_rate=50), [b"zz"] * 45, pause_s=0.02)
    assert status == 200, body
    assert body == {"received": 90}


def test_a_body_that_is_no_upload_is_held_to_the_json_limit_and_a_job_with_a_photo_is_not():
    app = FastAPI()

    @app.post("/v1/jobs")
    async def raw(request: Request):
        return {"received": len(await request.body())}

    app.add_middleware(BodyLimit, default=4 * JSON_LIMIT, uploads=8 * JSON_LIMIT)
    client = TestClient(app)
    big = b"x" * (JSON_LIMIT + 1)
    for content_type in ("application/json", "text/plain", None):
        r = client.post("/v1/jobs", content=big, headers={"content-type": content_type} if content_type else {})
        assert (r.status_code, r.json()) == (413, refused(JSON_LIMIT)), content_type
    r = client.post("/v1/jobs", content=streamed(big), headers={"content-type": "application/json"})
    assert (r.status_code, r.json()) == (413, refused(JSON_LIMIT)), "streamed without a length: counted"
    body, content_type = multipart(2 * JSON_LIMIT)
    r = client.post("/v1/jobs", content=body, headers={"content-type": content_type})
    assert (r.status_code, r.json()) == (200, {"received": len(body)})


@pytest.mark.parametrize("sent", ["k3y%2fwith%2bslash%3d0123", "k3y/with%2Bslash=0123", "k3y%2Fwith+slash%3D0123"],
                         ids=["lowercase-hex", "only-the-plus-encoded", "all-but-the-plus-encoded"])
def test_the_access_log_hides_the_key_however_a_client_percent_encodes_it(sent):
    """A base64 key (openssl rand -base64) has / + =: .NET's UrlEncode writes %2f in lower case, and a client
    may encode some of its characters and not others. The access log must not show the key in any of them."""
    from backend.api.middleware import _KeyOutOfAccessLog

    hider = _KeyOutOfAccessLog()
    hider.hide("k3y/with+slash=0123")
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5", "GET", f"/v1/jobs?api_key={sent}&limit=1", "1.1", 401), None)
    assert hider.filter(record)
    assert record.args[2] == "/v1/jobs?api_key=***&limit=1"
