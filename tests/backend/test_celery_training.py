"""LoRA trainings on GPU nodes (EXECUTOR=celery), on the real Redis, real nodes and the tiny model: a training
runs as a chain of chunks, each resumed from the checkpoint the one before stored, so no task outlives the
broker's visibility timeout, and a node's GPU process killed mid-way costs one chunk, not the training."""

import os
import re
import signal
import time

from backend.gpu.celery_app import TRAIN_CHUNK_MIN
from tests.backend import celery_parts
from tests.backend.celery_parts import wait_until
from tests.backend.test_products_e2e import start_training, wait_training

cluster, redis_server = celery_parts.cluster, celery_parts.redis_server  # the module's fixtures
STEPS = 2 * TRAIN_CHUNK_MIN + 10  # three chunks: to 50, to 100, to 110


def nodes_log(cluster) -> str:
    return "".join(node.log() for node in cluster.nodes)


def test_a_training_runs_on_the_nodes_in_chunks_and_its_product_draws_with_the_lora(cluster):
    backend = cluster.backend
    training_id = start_training(backend, "kettle", STEPS, photos=3)
    training = wait_training(backend, training_id, timeout=600)
    assert training["status"] == "succeeded", training
    assert training["progress"] == {"step": STEPS, "steps": STEPS} and training["worker"].startswith("node-")
    log = nodes_log(cluster)
    for start, end in ((0, 50), (50, 100), (100, STEPS)):
        assert f"training {training_id}, steps {start} to {end} of {STEPS}" in log, log[-3000:]
    product = next(p for p in backend.get("/v1/catalog").json()["products"] if p["name"] == "kettle")
    assert product["has_lora"] and backend.storage.exists("products/kettle.safetensors")
    job = backend.wait_job(backend.submit({"product": "kettle", "prompt": "<product> on a table", "num_images": 1,
                                           "steps": 2, "width": 64, "height": 64})["id"])
    assert job["status"] == "succeeded", job


def test_a_node_process_killed_mid_training_costs_one_chunk_and_the_training_finishes(cluster):
    backend = cluster.backend
    training_id = start_training(backend, "teapot", STEPS, photos=3)
    seen = wait_until(lambda: (t := backend.get(f"/v1/trainings/{training_id}").json())["progress"]["step"]
                      > TRAIN_CHUNK_MIN + 2 and t["status"] == "running" and t, 600, 0.05, what="in its second chunk")
    victim = cluster.beats()[seen["worker"]]["pid"]
    os.kill(victim, signal.SIGKILL)
    training = wait_training(backend, training_id, timeout=600)
    assert training["status"] == "succeeded", training
    log = nodes_log(cluster)
    retried = re.findall(rf"training {training_id}, steps (\d+) to 100 of {STEPS} \(attempt 2\)", log)
    assert retried and int(retried[0]) >= TRAIN_CHUNK_MIN, "the killed chunk ran again from its newest checkpoint"
    assert f"training {training_id}, steps 0 to" in log and log.count(f"training {training_id}, steps 0 to") == 1, \
        "the first chunk was not made again: the retry resumed from its checkpoint"
    assert next(p for p in backend.get("/v1/catalog").json()["products"] if p["name"] == "teapot")["has_lora"]


def test_a_product_deleted_mid_training_stops_its_chunks_on_the_nodes(cluster):
    backend = cluster.backend
    training_id = start_training(backend, "urn", 5000)
    wait_until(lambda: backend.get(f"/v1/trainings/{training_id}").json()["progress"]["step"] >= 3, 300, 0.05,
               what="the training running on a node")
    assert backend.delete("/v1/products/urn").status_code == 204
    training = wait_training(backend, training_id, timeout=30)
    assert training["status"] == "failed" and "the training was stopped" in training["error"], training
    ended = (f"training {training_id} stopped at step", f"training {training_id} was stopped; its chunk")
    wait_until(lambda: any(line in nodes_log(cluster) for line in ended), 30, 0.1,
               what="the node's chunk stopped mid-way, or dropped before it began")
    chunks = nodes_log(cluster).count(f"training {training_id}, steps")
    time.sleep(3)
    assert nodes_log(cluster).count(f"training {training_id}, steps") == chunks, "no chunk runs after the stop"
