"""EXECUTOR=celery end to end: a real redis-server (password, append-only), real GPU nodes
(`python -m backend.node`, the tiny model on CPU), the real backend in uvicorn, SeaweedFS. The tests
share one cluster of two nodes and run in order; each leaves it idle."""

import io
import os
import signal
import time

import numpy as np
from PIL import Image

from tests.backend import celery_parts
from tests.backend.celery_parts import wait_until
from tests.backend.test_upscale_e2e import wait_upscale
from tests.factories import decode_png, png_bytes

SMALL = {"steps": 2, "width": 64, "height": 64}
LONG = {"prompt": "a long job", "width": 128, "height": 128, "seed": 5}

cluster, redis_server = celery_parts.cluster, celery_parts.redis_server  # the module's fixtures


def images_of(backend, job: dict) -> list:
    return [decode_png(backend.storage.get(img["key"])) for img in job["images"]]


def job_of(backend, job_id: str) -> dict:
    return backend.get(f"/v1/jobs/{job_id}").json()


def running_on(backend, job_id: str, worker: str | None = None) -> list[dict]:
    """The job's images running (with at least one step done) on `worker`, or anywhere."""
    return [img for img in job_of(backend, job_id)["images"] if img["status"] == "running" and img["progress"]
            and (worker is None or img["worker"] == worker)]


def assert_made_once(cluster, job: dict) -> None:
    """Every image succeeded, its object is stored, and no node generated it twice."""
    assert job["status"] == "succeeded", job
    made = cluster.made(job["id"])
    for img in job["images"]:
        assert cluster.backend.storage.exists(img["key"]), img
        assert made[img["index"]] <= 1, f"image {img['index']} made {made[img['index']]} times"


def test_two_nodes_share_a_job_and_give_the_local_executors_pixels(cluster, backend):
    spec = {"prompt": "a leather bag", "num_images": 4, "seed": 7, **SMALL}
    job = cluster.backend.wait_job(cluster.backend.submit(spec)["id"])
    assert job["status"] == "succeeded", job
    workers = [img["worker"] for img in job["images"]]
    assert sorted(set(workers)) == ["node-a/0", "node-b/0"], "one batch of two on each node"
    assert workers[0] == workers[1] and workers[2] == workers[3], "images batched per GPU as the local executor does"
    local = backend.wait_job(backend.submit(spec)["id"])  # the local executor, two workers
    for a, b in zip(images_of(cluster.backend, job), images_of(backend, local)):
        assert np.abs(a - b).max() <= 2  # the same seeds and batches; thread counts may move a rounding
    health = cluster.backend.get("/health").json()
    assert health["status"] == "ok" and health["queue"] == {"pending": 0}
    assert {w["id"]: w["device"] for w in health["workers"]} == {"node-a/0": "cpu", "node-b/0": "cpu"}


def test_a_local_upscale_runs_on_a_node_and_is_queued_while_every_node_is_busy(cluster):
    backend = cluster.backend
    job = backend.wait_job(backend.submit({"prompt": "to upscale", "num_images": 1, "seed": 2, **SMALL})["id"])
    busy = backend.submit(LONG | {"num_images": 2, "steps": 150})
    wait_until(lambda: len(running_on(backend, busy["id"])) == 2, 60, what="both nodes busy")
    assert backend.post(f"/v1/jobs/{job['id']}/images/0/upscale").status_code == 202
    time.sleep(2)  # long enough for the task to reach the broker (and a node's prefetch)
    assert job_of(backend, job["id"])["images"][0]["upscale"]["status"] == "queued", "no node has taken it up"
    backend.post(f"/v1/jobs/{busy['id']}/cancel")
    record = wait_upscale(backend, job["id"], 0, timeout=60)
    assert record["status"] == "succeeded", record
    with Image.open(io.BytesIO(backend.storage.get(record["key"]))) as big:
        assert big.size == (256, 256)


def test_cancel_stops_running_images_on_the_nodes_within_seconds(cluster):
    backend = cluster.backend
    ticket = backend.submit(LONG | {"num_images": 2, "steps": 150})
    wait_until(lambda: len(running_on(backend, ticket["id"])) == 2, 60, what="both images running")
    asked = time.monotonic()
    assert backend.post(f"/v1/jobs/{ticket['id']}/cancel").status_code == 202
    wait_until(lambda: all(w["state"] == "ready" for w in cluster.beats().values()), 10, 0.05,
               what="both nodes free again")
    stopped_s = time.monotonic() - asked
    job = backend.wait_job(ticket["id"], timeout=10)
    assert job["status"] == "canceled" and {img["status"] for img in job["images"]} == {"canceled"}, job
    assert stopped_s < 5, f"the nodes took {stopped_s:.1f} s to stop"
    assert not any(backend.storage.exists(img["key"]) for img in job["images"])


def test_an_image_already_stored_when_its_batch_runs_is_not_made_again(cluster):
    """What a redelivered batch finds when its first node stored an image and died before reporting it."""
    backend = cluster.backend
    busy = backend.submit(LONG | {"num_images": 2, "steps": 150})
    wait_until(lambda: len(running_on(backend, busy["id"])) == 2, 60, what="both nodes busy")
    ticket = backend.submit({"prompt": "redelivered", "num_images": 2, "seed": 9, **SMALL})
    earlier = png_bytes(64, 64, (10, 200, 10))
    backend.storage.put(ticket["images"][0]["key"], earlier, "image/png")  # as if a node died after storing it
    backend.post(f"/v1/jobs/{busy['id']}/cancel")
    job = backend.wait_job(ticket["id"], timeout=60)
    assert job["status"] == "succeeded", job
    assert cluster.made(ticket["id"]) == {1: 1}, "image 0 was stored already: reported, not made again"
    assert backend.storage.get(ticket["images"][0]["key"]) == earlier


def test_kill_9_of_a_node_worker_mid_job_loses_nothing_and_makes_nothing_twice(cluster):
    backend = cluster.backend
    ticket = backend.submit(LONG | {"num_images": 4, "steps": 12})
    wait_until(lambda: running_on(backend, ticket["id"], "node-a/0"), 60, 0.05, what="node-a working")
    victim = cluster.beats()["node-a/0"]["pid"]
    os.kill(victim, signal.SIGKILL)
    job = backend.wait_job(ticket["id"], timeout=150)
    assert_made_once(cluster, job)
    wait_until(lambda: cluster.beats()["node-a/0"]["pid"] != victim and cluster.beats()["node-a/0"]["state"] == "ready",
               60, what="node-a's worker replaced")


def test_backend_restart_mid_job_loses_nothing(cluster):
    first = cluster.backend
    ticket = first.submit(LONG | {"num_images": 4, "steps": 10})
    wait_until(lambda: running_on(first, ticket["id"]), 60, 0.05, what="the job running")
    os.killpg(first.process.pid, signal.SIGKILL)  # no goodbye: the nodes go on and report to the stream
    first.process.wait(10)
    second = cluster.start_backend()
    job = second.wait_job(ticket["id"], timeout=150)
    assert_made_once(cluster, job)
    assert "taken back after a restart" not in second.log(), "the job was in the broker still: not sent twice"


def test_redis_restart_while_idle_then_a_job_succeeds(cluster):
    cluster.redis.restart()
    ticket = cluster.backend.submit({"prompt": "after the restart", "num_images": 2, "seed": 3, **SMALL})
    job = cluster.backend.wait_job(ticket["id"], timeout=90)
    assert job["status"] == "succeeded", job
    cluster.backend.wait_health("ok", timeout=30)


def test_a_node_with_another_model_id_is_refused_work_with_the_reason(cluster, tmp_path):
    other = tmp_path / "another-model"
    other.symlink_to(cluster.model)  # loads fine; it is simply not the backend's MODEL_ID
    odd = cluster.start_node("node-odd", MODEL_ID=str(other))
    backend = cluster.backend
    odd_worker = {"id": "node-odd/0", "device": "cpu", "state": "dead"}  # loaded, and listed as taking no work

    def listed() -> dict | None:
        health = backend.get("/health").json()
        return health if odd_worker in health["workers"] else None

    health = wait_until(listed, 90, what="the odd node loaded and listed")
    assert health["status"] == "degraded", health
    job = backend.wait_job(backend.submit({"prompt": "refused", "num_images": 3, "seed": 1, **SMALL})["id"])
    assert job["status"] == "succeeded" and not {img["worker"] for img in job["images"]} - {"node-a/0", "node-b/0"}
    reason = f"runs MODEL_ID={str(other)!r} but this backend runs {cluster.model!r}"
    assert reason in backend.log(), "the backend says why the node gets no work"
    assert "it will be given no work until they match" in odd.log(), "so does the node"
    odd.stop()
