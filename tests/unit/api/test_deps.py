"""backend/api/deps.py: who may call /v1 (API_KEY, or loopback without one) and the submission rate limit,
through real requests to a minimal FastAPI app with the project's error handlers."""

import hashlib
from types import SimpleNamespace

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from backend.api.deps import ClientDep, RateLimitedClientDep
from backend.config import Settings
from backend.errors import install_error_handlers
from backend.ops.metrics import Metrics
from backend.ops.ratelimit import RateLimiter

KEY = "unit-test-key-0123456789"
LOCAL = ("127.0.0.1", 5000)


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make_app(api_key: str | None = None, per_minute: int = 60, clock=None) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    settings = Settings(api_key=api_key, rate_limit_per_minute=per_minute)
    app.state.services = SimpleNamespace(settings=settings, metrics=Metrics(),
                                         limiter=RateLimiter(per_minute, clock=clock or Clock()))

    @app.get("/v1/whoami")
    def whoami(client: ClientDep) -> dict:
        return {"client": client}

    @app.post("/v1/jobs")
    def submit(client: RateLimitedClientDep) -> dict:
        return {"client": client}

    return app


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


# ----- no API_KEY: loopback only -----
def test_require_client_without_api_key_refuses_a_remote_client():
    r = TestClient(make_app()).get("/v1/whoami")  # TestClient's own client host is "testclient", not an address
    assert r.status_code == 403
    assert "API_KEY is not set" in r.json()["detail"]
    assert "set API_KEY on the backend" in r.json()["detail"]


def test_require_client_without_api_key_refuses_a_public_address():
    r = TestClient(make_app(), client=("203.0.113.7", 5000)).get("/v1/whoami")
    assert r.status_code == 403


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.53", "::1"])
def test_require_client_without_api_key_lets_loopback_in(host):
    r = TestClient(make_app(), client=(host, 5000), base_url="http://localhost").get("/v1/whoami")
    assert (r.status_code, r.json()) == (200, {"client": f"local:{host}"})


def test_require_client_without_api_key_refuses_a_name_that_only_looks_local():
    r = TestClient(make_app(), client=("localhost", 5000)).get("/v1/whoami")
    assert r.status_code == 403


# ----- API_KEY set -----
def test_require_client_with_api_key_and_no_header_is_401_with_challenge():
    r = TestClient(make_app(KEY), client=LOCAL).get("/v1/whoami")
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert "Authorization: Bearer <API_KEY>" in r.json()["detail"]


@pytest.mark.parametrize("header", [f"Bearer {KEY}x", f"Bearer {KEY[:-1]}", "Bearer ", f"Basic {KEY}", KEY,
                                    f"Token {KEY}"])
def test_require_client_with_wrong_key_is_401(header):
    r = TestClient(make_app(KEY)).get("/v1/whoami", headers={"Authorization": header})
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"


def test_require_client_with_api_key_refuses_loopback_without_the_key():
    r = TestClient(make_app(KEY), client=LOCAL).get("/v1/whoami")
    assert r.status_code == 401


def test_require_client_with_right_key_passes_from_anywhere():
    r = TestClient(make_app(KEY), client=("203.0.113.7", 5000)).get("/v1/whoami", headers=bearer(KEY))
    assert r.status_code == 200
    assert r.json() == {"client": "key:" + hashlib.sha256(KEY.encode()).hexdigest()[:16]}


def test_require_client_scheme_is_case_insensitive():
    r = TestClient(make_app(KEY)).get("/v1/whoami", headers={"Authorization": f"bearer {KEY}"})
    assert r.status_code == 200


def test_require_client_identity_differs_by_key_and_hides_it():
    other = "another-key-9876543210"
    first = TestClient(make_app(KEY)).get("/v1/whoami", headers=bearer(KEY)).json()["client"]
    second = TestClient(make_app(other)).get("/v1/whoami", headers=bearer(other)).json()["client"]
    assert first != second
    assert KEY not in first and other not in second


# ----- rate limit -----
def test_rate_limited_refuses_with_429_and_retry_after():
    app = make_app(KEY, per_minute=2)
    client = TestClient(app)
    assert [client.post("/v1/jobs", headers=bearer(KEY)).status_code for _ in range(2)] == [200, 200]
    r = client.post("/v1/jobs", headers=bearer(KEY))
    assert r.status_code == 429
    assert r.headers["retry-after"] == "30"  # one token back at 2 a minute
    assert r.json()["detail"] == "too many submissions; the limit is 2 a minute, try again in 30 s"
    registry = app.state.services.metrics.registry
    assert registry.get_sample_value("showroom_jobs_refused_total", {"reason": "rate_limit"}) == 1


def test_rate_limited_allows_again_once_the_wait_is_over():
    clock = Clock()
    client = TestClient(make_app(KEY, per_minute=1, clock=clock))
    assert client.post("/v1/jobs", headers=bearer(KEY)).status_code == 200
    clock.now = 59.0
    r = client.post("/v1/jobs", headers=bearer(KEY))
    assert (r.status_code, r.headers["retry-after"]) == (429, "1")
    clock.now = 60.0
    assert client.post("/v1/jobs", headers=bearer(KEY)).status_code == 200


def test_rate_limited_checks_the_key_first():
    client = TestClient(make_app(KEY, per_minute=1))
    assert [client.post("/v1/jobs").status_code for _ in range(3)] == [401, 401, 401]
    assert client.post("/v1/jobs", headers=bearer(KEY)).status_code == 200


def test_rate_limited_counts_each_loopback_address_apart():
    app = make_app(per_minute=1)
    assert TestClient(app, client=("127.0.0.1", 1), base_url="http://localhost").post("/v1/jobs").status_code == 200
    assert TestClient(app, client=("127.0.0.1", 1), base_url="http://localhost").post("/v1/jobs").status_code == 429
    assert TestClient(app, client=("::1", 1), base_url="http://localhost").post("/v1/jobs").status_code == 200


def test_rate_limited_zero_is_off():
    client = TestClient(make_app(KEY, per_minute=0))
    assert {client.post("/v1/jobs", headers=bearer(KEY)).status_code for _ in range(20)} == {200}
