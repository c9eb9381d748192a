"""Session-wide real parts: the tiny pipeline, a SeaweedFS S3 server, and backends served by uvicorn."""

import uuid
from pathlib import Path

import pytest

from backend.tools.seaweed import SeaweedS3
from tests.factories import Backend

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
BUCKET, ACCESS_KEY, SECRET_KEY = "showroom-test", "showroom-test-key", "showroom-test-secret-0123456789"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from backend.tools.tiny import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="session")
def tiny_segmenter(tmp_path_factory) -> Path:
    """A "not white" background remover in U²-Net's ONNX layout, for BG_REMOVAL_MODEL (no download)."""
    from backend.tools.tiny import build_tiny_segmenter

    return build_tiny_segmenter(tmp_path_factory.mktemp("segmenter") / "not-white.onnx")


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    server = SeaweedS3(tmp_path_factory.mktemp("seaweed"), BUCKET, ACCESS_KEY, SECRET_KEY).start()
    yield server
    server.stop()


def s3_env(s3, prefix: str) -> dict[str, str]:
    return {"STORAGE_URL": f"s3://{s3.bucket}/{prefix}", "S3_ENDPOINT_URL": s3.endpoint,
            "AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key, "AWS_REGION": "us-east-1"}


def open_test_storage(env: dict[str, str]):
    from backend.storage import open_storage

    return open_storage(env["STORAGE_URL"], endpoint_url=env.get("S3_ENDPOINT_URL"),
                        access_key=env.get("AWS_ACCESS_KEY_ID"), secret_key=env.get("AWS_SECRET_ACCESS_KEY"),
                        region=env.get("AWS_REGION"))


@pytest.fixture(scope="session")
def make_backend(tiny_model, tiny_segmenter, s3, tmp_path_factory):
    """Start a backend on the tiny model; S3 storage under a fresh prefix unless STORAGE_URL is given."""
    started: list[Backend] = []
    log_dir = tmp_path_factory.mktemp("logs")

    def make(wait_for: str = "ok", **env) -> Backend:
        base = {"MODEL_ID": str(tiny_model), "WORKERS": "1", "DEVICE": "cpu", "API_KEY": "test-api-key-123",
                "BG_REMOVAL_MODEL": str(tiny_segmenter)}
        if "STORAGE_URL" not in env:
            base |= s3_env(s3, f"t-{uuid.uuid4().hex[:8]}")
        backend = Backend(base | {k: str(v) for k, v in env.items() if v is not None}, log_dir)
        backend.storage = open_test_storage(backend.env)
        started.append(backend)
        return backend.start(wait_for=wait_for)

    yield make
    # All told at once, then waited for: a whole run leaves some 35 here, and each takes a second or two to
    # stop its workers (48 s at the session's end, one after the other).
    for backend in started:
        if backend.process and backend.process.poll() is None:
            backend.process.terminate()
    for backend in started:
        backend.stop()


@pytest.fixture(scope="session")
def backend(make_backend) -> Backend:
    """The shared backend most API tests talk to: two workers, S3 storage, an API key."""
    return make_backend(WORKERS="2")


@pytest.fixture(scope="module")
def torch_one_thread():
    """Toy-sized tensors on a 2-core box: a second torch thread only adds contention (10x slower when busy)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
