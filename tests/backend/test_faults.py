"""Faults injected into the real stack: every image still ends `succeeded` (object present) or `failed` (reason)."""

import os
import signal
import time

import psutil
import pytest

from backend.tools.celery_local import wait_until
from backend.tools.seaweed import SeaweedS3
from tests.backend.test_products_e2e import training_photos, wait_training
from tests.conftest import ACCESS_KEY, SECRET_KEY, s3_env
from tests.factories import packshot

LONG = {"prompt": "a long job", "steps": 60, "width": 128, "height": 128, "seed": 1}
SHARED = ("STORAGE_URL", "S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION")  # one bucket


def worker_pids(backend) -> list[int]:
    children = psutil.Process(backend.process.pid).children()
    return [p.pid for p in children if any("spawn_main" in part for part in p.cmdline())]


def pause_workers(backend) -> None:
    """Freeze its GPU processes (SIGSTOP) mid-task: the work stays `running` for as long as a test needs, however
    fast the box, while the API and the heartbeat it keeps in the bucket go on. A SIGKILL of the group ends them."""
    for pid in worker_pids(backend):
        os.kill(pid, signal.SIGSTOP)


def lost_images(backend, job: dict) -> list[dict]:
    """Images that did not end `succeeded` with their object, or `failed` with a reason and no object."""
    def kept(img: dict) -> bool:
        stored = backend.storage.exists(img["key"])
        return (img["status"] == "succeeded" and stored) or (img["status"] == "failed" and img["error"] and not stored)
    return [img for img in job["images"] if not kept(img)]


@pytest.fixture
def assert_nothing_lost(record_property):
    """Checks a finished job and records the count, for docs/RELIABILITY.md."""
    def check(backend, job: dict) -> None:
        lost = lost_images(backend, job)
        record_property("images_checked", len(job["images"]))
        record_property("images_lost", len(lost))
        assert job["status"] in ("succeeded", "failed"), job
        assert not lost, lost
    return check


def test_kill_9_a_worker_mid_job(make_backend, assert_nothing_lost):
    backend = make_backend(WORKERS="2")
    ticket = backend.submit(LONG | {"num_images": 6})
    wait_until(lambda: backend.get(f"/v1/jobs/{ticket['id']}").json()["status"] == "running")
    victim = worker_pids(backend)[0]
    os.kill(victim, signal.SIGKILL)
    states = wait_until(lambda: [w["state"] for w in backend.get("/health").json()["workers"]
                                 if w["state"] in ("dead", "starting")], timeout=10, every=0.02)
    assert states, "health should show the lost worker while it is replaced"
    job = backend.wait_job(ticket["id"], timeout=180)
    assert_nothing_lost(backend, job)
    assert job["status"] == "succeeded", "the images of the dead worker are tried again on a live one"
    backend.wait_health("ok", timeout=120)
    assert victim not in worker_pids(backend) and len(worker_pids(backend)) == 2


def test_backend_restart_mid_job(make_backend, assert_nothing_lost):
    first = make_backend(WORKERS="1")
    ticket = first.submit(LONG | {"num_images": 4})
    wait_until(lambda: first.get(f"/v1/jobs/{ticket['id']}").json()["status"] == "running")
    os.killpg(first.process.pid, signal.SIGKILL)  # the whole box goes: API and workers, no goodbye
    first.process.wait(10)
    assert first.storage.exists(ticket["manifest_key"])
    second = make_backend(**{k: first.env[k] for k in ("STORAGE_URL", "S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                                                         "AWS_SECRET_ACCESS_KEY", "AWS_REGION")}, WORKERS="1")
    job = second.wait_job(ticket["id"], timeout=180)
    assert_nothing_lost(second, job)
    assert job["status"] == "succeeded", "the job is taken back and finished after the restart"


def test_a_second_backend_on_the_bucket_leaves_running_jobs_alone_and_takes_them_when_their_backend_dies(
        make_backend, assert_nothing_lost):
    first = make_backend(WORKERS="1")
    ticket = first.submit(LONG | {"num_images": 2, "steps": 30})
    wait_until(lambda: first.get(f"/v1/jobs/{ticket['id']}").json()["status"] == "running", every=0.02)
    pause_workers(first)  # the job outlives the second's start without being made long
    second = make_backend(**{k: first.env[k] for k in SHARED}, WORKERS="1")
    time.sleep(1)
    assert f"job {ticket['id']} taken back" not in second.log(), "the first backend is alive: its job is its own"
    running = first.get(f"/v1/jobs/{ticket['id']}").json()
    assert running["status"] == "running", "the job must still run when its backend dies, or this proves nothing"
    os.killpg(first.process.pid, signal.SIGKILL)  # the first box goes, no goodbye: its lease is left behind
    first.process.wait(10)
    job = second.wait_job(ticket["id"], timeout=240)
    assert_nothing_lost(second, job)
    assert job["status"] == "succeeded", "the second backend takes the job over and finishes it"
    assert f"job {ticket['id']} taken back" in second.log()
    assert "gone from the bucket" in second.log(), "taken over while running, not at a start-up"


def test_a_second_backend_leaves_a_running_training_alone_and_finishes_it_when_its_backend_dies(make_backend):
    first = make_backend(WORKERS="1")
    added = first.post("/v1/products", data={"name": "vase", "trigger": "zxq vase"},
                       files={"photo": ("p.png", packshot(), "image/png")})
    assert added.status_code == 201, added.text
    started = first.post("/v1/products/vase/training", files=training_photos(3), data={"steps": "100", "rank": "4"})
    assert started.status_code == 202, started.text
    training_id = started.json()["id"]
    # Past its first checkpoint (every 20 steps of 100), stored before step 21 begins: the take-over resumes from it.
    wait_until(lambda: first.get(f"/v1/trainings/{training_id}").json()["progress"]["step"] > 20, 120, 0.02)
    pause_workers(first)  # the training outlives the second's start without being made long
    second = make_backend(**{k: first.env[k] for k in SHARED}, WORKERS="1")
    time.sleep(1)
    assert f"training {training_id} of vase taken back" not in second.log(), "its backend is alive: it is its own"
    running = second.get(f"/v1/trainings/{training_id}").json()
    assert running["status"] == "running" and running["progress"]["step"] < 100, "it must outlive the first backend"
    os.killpg(first.process.pid, signal.SIGKILL)
    first.process.wait(10)
    training = wait_training(second, training_id, timeout=400)
    assert training["status"] == "succeeded", training
    assert training["resumed_from"] and training["resumed_from"] >= 20, "from the first backend's checkpoint"
    assert f"training {training_id} of vase taken back" in second.log()
    assert "gone from the bucket" in second.log(), "taken over while running, not at a start-up"
    assert next(p for p in second.get("/v1/catalog").json()["products"] if p["name"] == "vase")["has_lora"]


@pytest.fixture
def own_s3(tmp_path):
    server = SeaweedS3(tmp_path / "seaweed", "outage", ACCESS_KEY, SECRET_KEY).start()
    yield server
    # Thrown away, so killed: after a SIGSTOP its graceful stop can wait out its 15 s on a volume-server
    # request the stall left open.
    if server.process and server.process.poll() is None:
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait(10)


def test_storage_outage_mid_job(make_backend, assert_nothing_lost, own_s3):
    backend = make_backend(WORKERS="1", STORAGE_RETRY_S="4", **s3_env(own_s3, "outage"))
    ticket = backend.submit(LONG | {"num_images": 4, "steps": 40})
    wait_until(lambda: backend.get(f"/v1/jobs/{ticket['id']}").json()["status"] == "running")
    own_s3.stop()
    health = wait_until(lambda: (h := backend.get("/health").json())["status"] == "degraded" and h, timeout=15)
    assert "storage" in health["detail"]
    assert backend.get("/v1/jobs").status_code in (502, 503), "listing needs storage: a clear 5xx, not a hang"
    time.sleep(6)  # longer than the backend's write retry budget: some images may fail, none may be lost
    own_s3.start()
    backend.wait_health("ok", timeout=30)
    job = wait_until(lambda: (j := backend.get(f"/v1/jobs/{ticket['id']}").json())["status"]
                     in ("succeeded", "failed") and j, timeout=120, every=0.3)
    assert_nothing_lost(backend, job)
    stored = backend.storage.get(ticket["manifest_key"])
    assert b'"running"' not in stored and b'"queued"' not in stored, "the final manifest reached storage"
    after = backend.wait_job(backend.submit({"prompt": "after", "num_images": 1, "steps": 2})["id"])
    assert after["status"] == "succeeded", "the backend recovers by itself"


def timed(call):
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


def test_a_hung_storage_server_never_freezes_the_api(make_backend, assert_nothing_lost, own_s3, record_property):
    """SeaweedFS stopped with SIGSTOP accepts connections and never answers: only time-outs notice it."""
    backend = make_backend(WORKERS="1", **s3_env(own_s3, "outage"))
    ticket = backend.submit(LONG | {"num_images": 2, "steps": 30})
    wait_until(lambda: backend.get(f"/v1/jobs/{ticket['id']}").json()["status"] == "running")
    os.killpg(own_s3.process.pid, signal.SIGSTOP)
    try:
        refused, took = timed(lambda: backend.post("/v1/jobs", json={"prompt": "during the stall", "num_images": 1}))
        assert refused.status_code == 503, refused.text
        assert took < 15, f"a submit waited {took:.1f}s on a hung store"
        record_property("submit_refused_s", round(took, 2))
        health_s = []

        def degraded():
            response, took = timed(lambda: backend.get("/health"))
            health_s.append(took)
            return response.json()["status"] == "degraded" and response.json()
        health = wait_until(degraded, timeout=20, every=0.3)
        assert "storage" in health["detail"]
        assert max(health_s) < 2, f"/health took {max(health_s):.1f}s during the stall"
        record_property("health_max_s", round(max(health_s), 2))
        known_down, took = timed(lambda: backend.post("/v1/jobs", json={"prompt": "still stalled", "num_images": 1}))
        assert known_down.status_code == 503 and took < 6, (known_down.status_code, took)  # one short probe
        assert known_down.headers.get("retry-after"), "a refused client is told when to try again"
        running, took = timed(lambda: backend.get(f"/v1/jobs/{ticket['id']}"))
        assert running.status_code == 200 and took < 2, "a job being made is read from memory, not storage"
    finally:
        os.killpg(own_s3.process.pid, signal.SIGCONT)
    backend.wait_health("ok", timeout=60)
    job = backend.wait_job(ticket["id"], timeout=180)
    assert_nothing_lost(backend, job)
    assert job["status"] == "succeeded", "the job submitted before the stall finishes once storage answers"
    after = backend.wait_job(backend.submit({"prompt": "after", "num_images": 1, "steps": 2})["id"])
    assert after["status"] == "succeeded"
    listed = [j["spec"]["prompt"] for j in backend.get("/v1/jobs").json()["jobs"]]
    assert "during the stall" not in listed and "still stalled" not in listed, "a refused submit left no job"


def test_backend_restarted_while_storage_is_down_finishes_the_earlier_job(make_backend, assert_nothing_lost,
                                                                          own_s3):
    env = s3_env(own_s3, "outage")
    first = make_backend(WORKERS="1", **env)
    ticket = first.submit(LONG | {"num_images": 3})
    wait_until(lambda: first.get(f"/v1/jobs/{ticket['id']}").json()["status"] == "running")
    os.killpg(first.process.pid, signal.SIGKILL)
    first.process.wait(10)
    own_s3.stop()

    second = make_backend(wait_for="degraded", WORKERS="1", **env)
    assert "storage" in second.get("/health").json()["detail"]
    own_s3.start()
    job = second.wait_job(ticket["id"], timeout=180)
    assert_nothing_lost(second, job)
    assert job["status"] == "succeeded", "the earlier run's job is taken back once storage answers"
    assert "taken back once storage answers" in second.log()


def test_an_image_past_its_time_limit_fails_with_the_reason_and_the_worker_is_replaced(make_backend,
                                                                                     assert_nothing_lost):
    backend = make_backend(WORKERS="1", IMAGE_TIMEOUT_S="3")
    slow = backend.submit(LONG | {"num_images": 1, "steps": 150, "width": 256, "height": 256})
    job = backend.wait_job(slow["id"], timeout=120)
    assert_nothing_lost(backend, job)
    assert job["status"] == "failed" and "timed out after 3 s (IMAGE_TIMEOUT_S=3)" in job["images"][0]["error"]
    backend.wait_health("ok", timeout=120)
    after = backend.wait_job(backend.submit({"prompt": "after", "num_images": 1, "steps": 2})["id"])
    assert after["status"] == "succeeded", f"a fresh worker took over: {after['images'][0]['error']}"
