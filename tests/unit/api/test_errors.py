"""backend/errors.py: storage's answers mapped at the edge, through real requests to a minimal app."""

from fastapi import FastAPI
from fastapi.testclient import TestClient

from backend.errors import install_error_handlers
from backend.storage import ObjectMissing, StorageError


def make_app() -> TestClient:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/v1/jobs/{job_id}/cancel")
    def raced(job_id: str):  # the job's manifest removed by a DELETE while this request read it
        raise ObjectMissing(f"jobs/{job_id}/job.json")

    @app.get("/v1/catalog")
    def away():
        raise StorageError("connect timeout")

    return TestClient(app)


def test_an_object_removed_while_the_request_ran_is_404_not_storage_trouble():
    r = make_app().post("/v1/jobs/abc/cancel")
    assert (r.status_code, r.json()) == (404, {"detail": "not found: it was deleted while this request ran"})


def test_storage_that_does_not_answer_is_503_with_a_retry_after():
    r = make_app().get("/v1/catalog")
    assert r.status_code == 503 and r.headers["Retry-After"] == "5"
    assert r.json()["detail"].startswith("storage is unreachable, try again shortly")
