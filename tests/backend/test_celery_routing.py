"""LoRA affinity (backend/gpu/celery_routing.py): which node a batch is sent to, from heartbeats; and, against
the real Redis with the executor in this process and no node, that nothing stays in a node's own queue."""

import json
import time
from collections import Counter
from types import SimpleNamespace

from backend.config import Settings
from backend.gpu import celery_app as ca
from backend.gpu import celery_routing as cr
from backend.gpu import messages as m
from backend.gpu.celery_executor import CeleryExecutor
from backend.storage import LocalStorage
from tests.backend import celery_parts
from tests.backend.celery_parts import wait_until
from tests.backend.test_celery_undecided import make_job

MODEL = "routing-test-model"
NOW = 1_000_000.0

redis_server = celery_parts.redis_server  # the fixture


def beat(state="ready", loras=(), model=MODEL, age=1.0, now=NOW) -> str:
    return json.dumps({"state": state, "model": model, "loras": list(loras), "device": "cpu", "ts": now - age})


def pick(beats: dict, loras: list[str], waiting=None) -> str | None:
    return cr.pick_node(beats, MODEL, loras, Counter(waiting or {}), NOW)


def test_an_idle_node_holding_the_product_lora_is_picked():
    beats = {"a/0": beat(loras=["bag"]), "b/0": beat(loras=["shoe"])}
    assert pick(beats, ["bag"]) == "a"
    assert pick(beats, ["shoe", "bag"]) == "b", "the product's LoRA (the first) counts most"
    assert pick(beats, ["hat"]) is None and pick(beats, []) is None


def test_a_busy_stale_or_other_model_holder_is_not_picked():
    assert pick({"a/0": beat("busy", ["bag"])}, ["bag"]) is None
    assert pick({"a/0": beat(loras=["bag"], age=cr.FRESH_S + 1)}, ["bag"]) is None
    assert pick({"a/0": beat(loras=["bag"], model="another")}, ["bag"]) is None
    assert pick({"a/0": beat("starting", ["bag"])}, ["bag"]) is None


def test_a_node_gets_no_more_routed_batches_than_idle_gpus_holding_the_lora():
    beats = {"a/0": beat(loras=["bag"]), "a/1": beat(loras=["bag"]), "a/2": beat(loras=[]), "b/0": beat(loras=["bag"])}
    assert pick(beats, ["bag"]) == "a", "two idle holders beat one"
    assert pick(beats, ["bag"], {"a": 1}) == "a"
    assert pick(beats, ["bag"], {"a": 2}) == "b"
    assert pick(beats, ["bag"], {"a": 2, "b": 1}) is None


def test_more_of_the_jobs_loras_held_wins_among_product_holders():
    beats = {"a/0": beat(loras=["bag"]), "b/0": beat(loras=["bag", "film"])}
    assert pick(beats, ["bag", "film"]) == "b"


def queue_ids(client, queue: str) -> list[str]:
    return [cr.task_of(raw)[0] for raw in client.lrange(queue, 0, -1)]


def test_a_batch_its_node_does_not_take_moves_to_the_shared_queue(redis_server, tmp_path):
    """Nobody consumes here: a batch routed to node-x (idle, holding the LoRA, as its heartbeat says) lies in
    its own queue; after AFFINITY_WAIT_S it is in the shared queue, addressed there, whole."""
    client = redis_server.client()  # this module's own Redis: empty
    settings = Settings(executor="celery", broker_url=redis_server.url, model_id=MODEL,
                        storage_url=f"file://{tmp_path / 'storage'}")
    executor = CeleryExecutor(settings, LocalStorage(tmp_path / "storage"))
    shared, own, busy_own = executor.queue, ca.node_queue("node-x"), ca.node_queue("node-y")
    bag = m.LoraTask("bag", 1.0, "products/bag.safetensors")
    client.hset(ca.WORKERS, mapping={"node-x/0": beat(loras=["bag"], now=time.time()),
                                     "node-y/0": beat("busy", ["bag"], now=time.time())})
    executor.start()
    try:
        job = make_job(4)
        sent_at = time.monotonic()
        executor.submit(job, (bag,))
        routed = queue_ids(client, own)
        assert len(routed) == 1, "one batch to the idle holder, no more than it has idle GPUs"
        assert len(queue_ids(client, shared)) == 1 and queue_ids(client, busy_own) == [], "the busy one gets none"
        wait_until(lambda: not client.llen(own), cr.AFFINITY_WAIT_S + 5, 0.05, "the routed batch moved on")
        assert time.monotonic() - sent_at >= cr.AFFINITY_WAIT_S, "it had its time on the node's queue first"
        assert routed[0] in queue_ids(client, shared)
        moved = json.loads(next(r for r in client.lrange(shared, 0, -1) if cr.task_of(r)[0] == routed[0]))
        assert moved["properties"]["delivery_info"]["routing_key"] == shared, "a redelivery goes to the shared queue"
        _, kwargs = cr.task_of(json.dumps(moved))
        assert kwargs["task"]["job_id"] == job.id and kwargs["task"]["loras"][0]["name"] == "bag"

        # A batch that came back to a gone node's own queue (the broker's redelivery) is found and moved too.
        gone = ca.node_queue("node-gone")
        client.lpush(gone, cr.readdressed(client.lrange(shared, 0, 0)[0], gone))
        executor._reconcile_at = 0.0  # the scan runs with the reconcile
        wait_until(lambda: not client.llen(gone), 10, 0.05, "the stray batch moved on")
        assert client.llen(shared) == 3
    finally:
        executor.stop()


def test_a_routed_batch_holds_its_node_until_the_node_reports_it_started(redis_server):
    """A quick job after a quick job goes to the same idle holder: the first one's batch stops counting
    against its node once started, not only after AFFINITY_WAIT_S."""
    client = redis_server.client()
    client.delete(ca.WORKERS)  # the earlier test's nodes
    client.hset(ca.WORKERS, "node-z/0", beat(loras=["bag"], now=time.time()))
    router = cr.Router(client, MODEL, ca.image_queue(MODEL))
    held = SimpleNamespace(job=SimpleNamespace(id="job-1"), loras=(m.LoraTask("bag", 1.0, "products/bag.safetensors"),))
    assert [node for _, node in router.routes(held, [[0, 1]])] == ["node-z"]
    assert [node for _, node in router.routes(held, [[2]])] == [None], "its one idle GPU has a batch coming"
    router.started("job-1", (0, 1))
    assert [node for _, node in router.routes(held, [[3]])] == ["node-z"]
