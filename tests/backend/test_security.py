"""Security: wrong keys refused (deps.py compares them with hmac.compare_digest; not timed here), secrets
never echoed, CORS only for configured origins, unsafe production settings refused, uploads judged by content."""

import json

import pytest
import requests
from pydantic import ValidationError

from backend.api.deps import _is_loopback
from backend.config import Settings
from backend.contract import is_job_id, new_job_id
from tests.conftest import SECRET_KEY


def test_no_secret_in_logs_manifests_or_errors(backend):
    bad = requests.post(backend.url + "/v1/jobs", json={"prompt": "x"}, headers={"Authorization": "Bearer nope"},
                        timeout=10)
    assert backend.api_key not in bad.text and SECRET_KEY not in bad.text
    job = backend.wait_job(backend.submit({"prompt": "a secret-free job", "num_images": 1, "steps": 2})["id"])
    manifest = backend.storage.get(f"jobs/{job['id']}/job.json").decode()
    health = backend.get("/health").text + backend.get("/metrics").text + backend.get("/v1/catalog").text
    for text in (manifest, health, backend.log()):
        assert backend.api_key not in text
        assert SECRET_KEY not in text


def test_cors_answers_only_configured_origins(make_backend):
    backend = make_backend(CORS_ORIGINS=json.dumps(["https://shop.example"]))
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    allowed = requests.options(backend.url + "/v1/jobs", headers={"Origin": "https://shop.example"} | preflight,
                               timeout=10)
    assert allowed.headers.get("access-control-allow-origin") == "https://shop.example"
    denied = requests.options(backend.url + "/v1/jobs", headers={"Origin": "https://evil.example"} | preflight,
                              timeout=10)
    assert "access-control-allow-origin" not in denied.headers


def test_request_body_limit_refuses_a_huge_json_body(backend):
    r = backend.post("/v1/jobs", data=b"{" + b" " * (22 * 1024 * 1024) + b"}",
                     headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["detail"]


@pytest.mark.parametrize("env, fragment", [
    ({"PUBLIC_BIND": "true"}, "API_KEY"),
    ({"STORAGE_URL": "s3://bucket", "AWS_ACCESS_KEY_ID": "abc"}, "AWS_SECRET_ACCESS_KEY"),
    ({"UPSCALER": "replicate"}, "REPLICATE_API_TOKEN"),
    ({"STORAGE_URL": "ftp://x"}, "STORAGE_URL"),
    ({"STORAGE_URL": "file://relative/path"}, "STORAGE_URL"),
    ({"WORKERS": "many"}, "WORKERS"),
])
def test_unsafe_or_broken_settings_are_refused_with_what_to_set(monkeypatch, env, fragment):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=fragment):
        Settings()


def test_settings_never_print_secrets(monkeypatch):
    monkeypatch.setenv("API_KEY", "super-secret-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret-value")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    text = repr(Settings()) + str(Settings())
    assert "super-secret-key" not in text and "aws-secret-value" not in text


def test_without_api_key_only_loopback_clients_are_served():
    assert _is_loopback("127.0.0.1") and _is_loopback("::1") and _is_loopback("127.8.9.10")
    assert not _is_loopback("10.0.0.5") and not _is_loopback("203.0.113.7") and not _is_loopback("")


def test_job_ids_are_unguessable_and_sort_by_time():
    ids = [new_job_id() for _ in range(1000)]
    assert len(set(ids)) == 1000 and all(is_job_id(i) for i in ids)
    assert ids == sorted(ids)
    assert len({i[13:] for i in ids}) == 1000, "76 random bits after the time"


def test_health_names_a_local_model_folder_without_its_path_to_a_caller_without_the_key(backend, tiny_model):
    stranger = requests.get(f"{backend.url}/health", timeout=10).json()
    insider = backend.get("/health").json()
    assert stranger["model"] == tiny_model.name and insider["model"] == str(tiny_model)


def test_an_api_key_sent_in_the_url_is_not_written_to_the_log(backend):
    # A client that puts the key in the query string (`?api_key=`, a common habit) is refused, but uvicorn's
    # access log writes the request line as it came: the box's log would then hold the key.
    for path in (f"/v1/jobs?api_key={backend.api_key}", f"/v1/jobs/{backend.api_key}?limit=1"):
        requests.get(backend.url + path, timeout=10)
    requests.get(backend.url + "/health?x=1", timeout=10)  # a request after them: their lines are written by now
    log = backend.log()
    assert "GET /v1/jobs?api_key=" in log, "the access log is on: the line is there, the key is not"
    assert backend.api_key not in log
