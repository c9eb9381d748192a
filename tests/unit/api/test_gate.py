"""The AuthGate: the key is checked before a byte of the body is read; the docs follow the key; deep JSON is 422."""

import socket
import threading
import time

import pytest
import uvicorn

from backend.config import Settings
from backend.main import create_app
from backend.tools.seaweed import free_port


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The real app (its lifespan off: no workers) in a real uvicorn, with an API key."""
    yield from _serve(Settings(api_key="gate-test-key-123", storage_url=f"file://{tmp_path_factory.mktemp('s')}"))


@pytest.fixture(scope="module")
def keyless(tmp_path_factory):
    """The same without API_KEY: it answers programs on this machine only."""
    yield from _serve(Settings(storage_url=f"file://{tmp_path_factory.mktemp('s')}"))


def _serve(settings):
    app = create_app(settings)
    app.router.lifespan_context = _no_lifespan
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    yield port
    server.should_exit = True
    thread.join(5)


class _no_lifespan:
    def __init__(self, app):
        pass

    async def __aenter__(self):
        return None

    async def __aexit__(self, *exc):
        return None


def raw_request(port: int, head: str, body: bytes = b"", read_timeout: float = 3) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as sock:
        sock.sendall(head.encode() + body)
        return sock.recv(4096)


def test_an_upload_without_the_key_is_refused_before_its_body_arrives(served):
    head = ("POST /v1/products HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            f"Content-Length: {500 * 1024 * 1024}\r\n\r\n")
    started = time.monotonic()
    answer = raw_request(served, head, b"--b\r\n")  # 500 MB announced, a few bytes sent, then we wait
    assert answer.startswith(b"HTTP/1.1 401") and b"missing or wrong API key" in answer
    assert time.monotonic() - started < 2, "answered while the client was still 'sending'"


def test_the_docs_need_the_key_when_one_is_set(served):
    assert raw_request(served, "GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 401")
    answer = raw_request(served, "GET /openapi.json HTTP/1.1\r\nHost: x\r\n"
                                 "Authorization: Bearer gate-test-key-123\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200")


def test_metrics_and_health_are_not_gated(served):
    for path in ("/metrics", "/health"):
        answer = raw_request(served, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 ") and not answer.startswith((b"HTTP/1.1 401", b"HTTP/1.1 403"))


@pytest.mark.parametrize("blank", ["", "   "])
def test_a_blank_api_key_is_no_key(blank, monkeypatch):
    monkeypatch.setenv("API_KEY", blank)
    assert Settings().api_key is None
    monkeypatch.setenv("PUBLIC_BIND", "true")
    with pytest.raises(ValueError, match="PUBLIC_BIND is set but API_KEY is not"):
        Settings()


def test_a_third_concurrent_lora_conversion_is_told_to_retry(tmp_path):
    from types import SimpleNamespace

    from fastapi.testclient import TestClient

    from backend.api import product_routes
    from backend.ops.metrics import Metrics
    from backend.ops.ratelimit import RateLimiter

    settings = Settings(storage_url=f"file://{tmp_path}")
    app = create_app(settings)
    app.router.lifespan_context = _no_lifespan
    app.state.services = SimpleNamespace(settings=settings, limiter=RateLimiter(0), metrics=Metrics())
    held = [product_routes.CONVERSIONS.acquire(blocking=False) for _ in range(2)]
    try:
        with TestClient(app, client=("127.0.0.1", 5000), base_url="http://localhost") as client:
            r = client.post("/v1/products", data={"name": "a", "trigger": "sks a"},
                            files={"file": ("a.safetensors", b"x" * 64)})
        assert r.status_code == 429 and "being converted already" in r.json()["detail"]
        assert r.headers["retry-after"] == "30"
    finally:
        for _ in held:
            product_routes.CONVERSIONS.release()


@pytest.mark.parametrize("header", [
    "Host: attacker.example",                      # DNS rebinding: the page's own name, pointed at 127.0.0.1
    "Host: 127.0.0.1\r\nOrigin: http://attacker.example",  # a form POST from a page elsewhere
    "Host: localhost\r\nOrigin: null",             # a sandboxed frame or a file
    "Host: 127.0.0.1\r\nSec-Fetch-Site: cross-site",
])
def test_without_a_key_a_request_a_web_page_elsewhere_sent_over_loopback_is_refused(keyless, header):
    body = b'{"prompt": "x"}'
    answer = raw_request(keyless, f"POST /v1/batches HTTP/1.1\r\n{header}\r\nContent-Type: text/plain\r\n"
                                  f"Content-Length: {len(body)}\r\n\r\n", body)
    assert answer.startswith(b"HTTP/1.1 403") and b"only programs on its machine" in answer, answer[:300]


@pytest.mark.parametrize("header", ["Host: 127.0.0.1:8000", "Host: localhost:8000", "Host: [::1]:8000",
                                    "Host: app.localhost", "Host: localhost\r\nOrigin: http://localhost:8501",
                                    "Host: 127.0.0.1\r\nSec-Fetch-Site: same-origin"])
def test_without_a_key_a_program_on_this_machine_is_answered(keyless, header):
    answer = raw_request(keyless, f"GET /v1/no-such-route HTTP/1.1\r\n{header}\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 404"), answer[:300]
