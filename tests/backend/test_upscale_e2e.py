"""Upscaling through the real backend: the endpoint, the manifest's `upscale` field, the stored 4x object."""

import dataclasses
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image

from backend.upscale.service import reachable_from_outside
from tests.factories import save_tiny_swin2sr
from tests.fake_replicate import FakeReplicate

SMALL = {"prompt": "a vase", "steps": 2, "width": 64, "height": 72, "seed": 4}


def wait_upscale(backend, job_id: str, index: int, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = backend.get(f"/v1/jobs/{job_id}").json()["images"][index]["upscale"]
        if record and record["status"] in ("succeeded", "failed"):
            return record
        time.sleep(0.2)
    raise TimeoutError(f"upscale of {job_id}/{index} not finished: {record}")


@pytest.fixture(scope="module")
def replicate_server():
    fake = FakeReplicate().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def replicate_backend(make_backend, replicate_server):
    """One backend for the module's Replicate tests (each start costs a GPU worker's load)."""
    return make_backend(UPSCALER="replicate", REPLICATE_API_TOKEN=replicate_server.token,
                        REPLICATE_BASE_URL=replicate_server.url)


@pytest.fixture
def fake_replicate(replicate_server):
    """The module's fake, as a new one would be: default behaviour, nothing recorded."""
    fresh = FakeReplicate()
    for f in dataclasses.fields(FakeReplicate):
        setattr(replicate_server, f.name, getattr(fresh, f.name))
    return replicate_server


def assert_exactly_4x(backend, job: dict, index: int, record: dict) -> None:
    assert record["key"] == f"jobs/{job['id']}/{index}_x4.png"
    with Image.open(io.BytesIO(backend.storage.get(record["key"]))) as big:
        assert big.size == (64 * 4, 72 * 4)


def test_replicate_upscale_lands_exactly_4x_and_is_paid_once(replicate_backend, fake_replicate):
    backend = replicate_backend
    assert backend.get("/health").json()["upscaler"] == "replicate"
    assert backend.get("/v1/catalog").json()["upscaler"] == "replicate"
    job = backend.wait_job(backend.submit(SMALL | {"num_images": 2})["id"])
    r = backend.post(f"/v1/jobs/{job['id']}/images/1/upscale")
    assert r.status_code == 202 and r.json() == {"key": f"jobs/{job['id']}/1_x4.png", "status": "queued"}
    again = backend.post(f"/v1/jobs/{job['id']}/images/1/upscale")
    assert again.status_code == 202 and again.json()["key"] == r.json()["key"]
    record = wait_upscale(backend, job["id"], 1)
    assert record["status"] == "succeeded", record
    assert_exactly_4x(backend, job, 1, record)
    done_again = backend.post(f"/v1/jobs/{job['id']}/images/1/upscale")  # the contract's answer; the manifest says done
    assert done_again.status_code == 202 and done_again.json() == r.json()
    assert len(fake_replicate.requests_to("POST", "/v1/predictions")) == 1, "asking three times paid once"
    create = fake_replicate.requests_to("POST", "/v1/predictions")[0]
    assert create.body["input"]["task"] == "real_sr"
    assert create.body["input"]["image"].startswith("data:image/png"), "a local S3 cannot be fetched by Replicate"
    assert backend.get(f"/v1/jobs/{job['id']}").json()["images"][0]["upscale"] is None


def test_two_simultaneous_upscale_requests_start_one_prediction(replicate_backend, fake_replicate):
    fake_replicate.polls_to_finish = 3
    backend = replicate_backend
    job = backend.wait_job(backend.submit(SMALL | {"num_images": 1})["id"])
    together = threading.Barrier(4)

    def click():
        together.wait(timeout=10)
        return backend.post(f"/v1/jobs/{job['id']}/images/0/upscale")

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: click(), range(4)))
    assert [a.status_code for a in answers] == [202] * 4
    assert {a.json()["key"] for a in answers} == {f"jobs/{job['id']}/0_x4.png"}
    record = wait_upscale(backend, job["id"], 0)
    assert record["status"] == "succeeded", record
    assert len(fake_replicate.predictions) == 1, "four clicks at once paid once"
    assert len([r for r in fake_replicate.requests_to("POST", "/v1/predictions") if r.path == "/v1/predictions"]) == 1


def test_replicate_model_failure_is_recorded_with_its_message(replicate_backend, fake_replicate):
    fake_replicate.outcome = "fail"
    backend = replicate_backend
    job = backend.wait_job(backend.submit(SMALL | {"num_images": 1})["id"])
    backend.post(f"/v1/jobs/{job['id']}/images/0/upscale")
    record = wait_upscale(backend, job["id"], 0)
    assert record["status"] == "failed" and "CUDA out of memory" in record["error"]
    assert not backend.storage.exists(record["key"])
    assert fake_replicate.token not in backend.log()


def upscale_record(backend, job_id: str, index: int) -> dict | None:
    return backend.get(f"/v1/jobs/{job_id}").json()["images"][index]["upscale"]


def test_local_upscale_with_a_tiny_swin2sr_is_queued_while_its_gpu_is_busy(make_backend, tmp_path):
    model = save_tiny_swin2sr(tmp_path / "swin2sr")
    backend = make_backend(UPSCALER="local", LOCAL_UPSCALER_MODEL=str(model))  # one worker
    job = backend.wait_job(backend.submit(SMALL | {"num_images": 1})["id"])
    busy = backend.submit({"prompt": "slow", "num_images": 1, "steps": 150, "width": 256, "height": 256})
    deadline = time.monotonic() + 60
    while backend.get(f"/v1/jobs/{busy['id']}").json()["images"][0]["progress"] == 0:
        assert time.monotonic() < deadline, "the slow job never started"
        time.sleep(0.1)
    assert backend.post(f"/v1/jobs/{job['id']}/images/0/upscale").status_code == 202
    time.sleep(1.5)  # long enough for the upscale's thread to hand it to the busy worker's queue
    assert upscale_record(backend, job["id"], 0)["status"] == "queued", "no GPU has taken it up yet"
    assert backend.post(f"/v1/jobs/{busy['id']}/cancel").status_code == 202
    record = wait_upscale(backend, job["id"], 0)
    assert record["status"] == "succeeded", record
    assert_exactly_4x(backend, job, 0, record)


def test_upscale_refusals(replicate_backend, fake_replicate):
    backend = replicate_backend
    running = backend.submit({"prompt": "slow", "num_images": 2, "steps": 150, "width": 256, "height": 256})
    r = backend.post(f"/v1/jobs/{running['id']}/images/1/upscale")
    assert r.status_code == 409 and "only a succeeded image" in r.json()["detail"]
    backend.post(f"/v1/jobs/{running['id']}/cancel")
    r = backend.post(f"/v1/jobs/{running['id']}/images/7/upscale")
    assert r.status_code == 404 and "no image 7" in r.json()["detail"]
    assert backend.post("/v1/jobs/" + "0" * 32 + "/images/0/upscale").status_code == 404
    assert not fake_replicate.requests_to("POST", "/v1/predictions")


def test_upscaler_off_says_how_to_turn_it_on(backend):
    running = backend.submit({"prompt": "slow", "num_images": 1, "steps": 150, "width": 256, "height": 256})
    r = backend.post(f"/v1/jobs/{running['id']}/images/0/upscale")
    assert r.status_code == 409 and "only a succeeded image" in r.json()["detail"], "as when the upscaler is on"
    backend.post(f"/v1/jobs/{running['id']}/cancel")
    job = backend.wait_job(backend.submit(SMALL | {"num_images": 1})["id"])
    r = backend.post(f"/v1/jobs/{job['id']}/images/3/upscale")
    assert r.status_code == 404 and "no image 3" in r.json()["detail"]
    assert backend.post("/v1/jobs/" + "0" * 32 + "/images/0/upscale").status_code == 404
    r = backend.post(f"/v1/jobs/{job['id']}/images/0/upscale")
    assert r.status_code == 503 and "UPSCALER=replicate" in r.json()["detail"]


def test_presigned_urls_go_to_replicate_only_from_public_endpoints():
    assert reachable_from_outside(None)
    assert reachable_from_outside("https://s3.eu-central-1.amazonaws.com")
    assert reachable_from_outside("https://abc.r2.cloudflarestorage.com")
    assert not reachable_from_outside("http://127.0.0.1:8333")
    assert not reachable_from_outside("http://localhost:8333")
    assert not reachable_from_outside("http://10.0.0.4:9000")
    assert not reachable_from_outside("http://seaweedfs:8333")
