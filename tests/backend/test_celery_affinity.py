"""LoRA affinity end to end (EXECUTOR=celery): a real redis-server, two real nodes (`python -m backend.node`,
the tiny model on CPU), the real backend in uvicorn, SeaweedFS. A job with a product goes to the idle node
that holds the product's LoRA; never waits for it when it is busy; and loses nothing when it dies. The
tests share one cluster and run in order; the last one kills a node."""

import time

from backend.gpu import celery_routing as cr
from tests.backend import celery_parts
from tests.backend.celery_parts import wait_until
from tests.backend.test_celery_e2e import LONG, SMALL, assert_made_once, running_on
from tests.factories import make_lora

NODES = ("node-a", "node-b")

cluster, redis_server = celery_parts.cluster, celery_parts.redis_server  # the module's fixtures


def node_of(worker: str) -> str:
    return worker.rpartition("/")[0]


def both_idle(cluster) -> None:
    def idle() -> bool:
        beats = cluster.beats()
        return all(beats.get(f"{n}/0", {}).get("state") == "ready" for n in NODES) and \
            cluster.backend.get("/health").json()["queue"]["pending"] == 0
    wait_until(idle, 60, 0.1, "both nodes idle")


def holders(cluster, product: str) -> list[str]:
    return sorted(node_of(w) for w, beat in cluster.beats().items() if product in beat.get("loras", ()))


def run(cluster, product: str, timeout: float = 90, **spec) -> dict:
    backend = cluster.backend
    ticket = backend.submit({"prompt": "<product> on a table", "product": product, "num_images": 1, "seed": 4,
                             **SMALL} | spec)
    job = backend.wait_job(ticket["id"], timeout=timeout)
    assert job["status"] == "succeeded", job
    return job


def routed(cluster, job_id: str, node: str) -> bool:
    return f"job {job_id} images [0] -> node {node} " in cluster.backend.log()


def test_a_job_with_a_product_goes_back_to_the_idle_node_holding_its_lora(cluster, tiny_model):
    backend = cluster.backend
    assert backend.add_product("bag", "leather bag", make_lora(tiny_model, seed=1)).status_code == 201
    both_idle(cluster)
    holder = node_of(run(cluster, "bag")["images"][0]["worker"])
    wait_until(lambda: holders(cluster, "bag") == [holder], 10, 0.1, "the heartbeat listing the LoRA")
    for seed in range(3):  # with both nodes idle, each would take it half the time without affinity
        both_idle(cluster)
        job = run(cluster, "bag", seed=10 + seed)
        assert job["images"][0]["worker"] == f"{holder}/0", job
        assert routed(cluster, job["id"], holder), "sent to the holder's own queue, not left to chance"
    assert holders(cluster, "bag") == [holder], "the other node never loaded it"


def test_a_job_with_the_product_while_its_node_is_busy_runs_on_the_other_at_once(cluster):
    backend = cluster.backend
    [holder] = holders(cluster, "bag")
    [other] = [n for n in NODES if n != holder]
    both_idle(cluster)
    busy = backend.submit(LONG | {"product": "bag", "num_images": 1, "steps": 150})
    wait_until(lambda: running_on(backend, busy["id"], f"{holder}/0"), 60, 0.05, what="the holder busy with it")
    started = time.monotonic()
    job = run(cluster, "bag", seed=21)
    took = time.monotonic() - started
    assert job["images"][0]["worker"] == f"{other}/0", job
    assert not routed(cluster, job["id"], holder), "a busy node is not sent work"
    assert running_on(backend, busy["id"], f"{holder}/0"), "it ran beside the long job, not after it"
    assert backend.post(f"/v1/jobs/{busy['id']}/cancel").status_code == 202
    assert backend.wait_job(busy["id"], timeout=30)["status"] == "canceled"
    assert took < 30, f"{took:.1f} s"


def test_a_node_that_dies_with_work_routed_to_it_loses_nothing(cluster, tiny_model):
    """The holder is killed (-9, the whole node) just before a job with its product is sent: the backend still
    sees its last heartbeat (idle, holding the LoRA) and routes a batch to it; that batch moves to the shared
    queue after AFFINITY_WAIT_S and the other node makes it."""
    backend = cluster.backend
    assert backend.add_product("shoe", "red shoe", make_lora(tiny_model, seed=2)).status_code == 201
    both_idle(cluster)
    holder = node_of(run(cluster, "shoe")["images"][0]["worker"])
    [other] = [n for n in NODES if n != holder]
    both_idle(cluster)
    wait_until(lambda: time.time() - cluster.beats()[f"{holder}/0"]["ts"] < 1.0, 15, 0.05, "a fresh heartbeat")
    [victim] = [n for n in cluster.nodes if n.name == holder]
    victim.kill()
    started = time.monotonic()
    ticket = backend.submit({"prompt": "<product> on a rock", "product": "shoe", "num_images": 2, "seed": 30, **SMALL})
    job = backend.wait_job(ticket["id"], timeout=90)
    took = time.monotonic() - started
    assert routed(cluster, job["id"], holder), "a batch was sent to the dead node's own queue"
    assert f"job {job['id']} images [0]: not taken from showroom.node.{holder}; moved" in backend.log()
    assert_made_once(cluster, job)
    assert {img["worker"] for img in job["images"]} == {f"{other}/0"}
    assert took < 60, f"{took:.1f} s"
    assert took >= cr.AFFINITY_WAIT_S
