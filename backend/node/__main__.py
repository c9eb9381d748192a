"""A GPU node (EXECUTOR=celery): `python -m backend.node [--name NAME]`. It opens no port: it connects
out to the broker at BROKER_URL, takes a batch when a GPU is free, writes the images to storage and
reports back on the events stream (backend.gpu.celery_app).

The main process settles the node's name and settings, then runs one Celery worker whose pool forks the
GPU processes (backend.node.tasks, backend.node.gpu); how a node works is told in backend.node.
"""

import argparse
import json
import logging
import os
import socket
import sys
import uuid

from backend.gpu import celery_app as ca
from backend.node import tasks
from backend.node.gpu import Node

log = logging.getLogger("showroom.node")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m backend.node", description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", help="this node's name in worker ids (<name>/<n>); default: the host name")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # it logs whole URLs: a webhook's may hold a token

    from backend.config import get_settings
    from backend.gpu.devices import visible_gpus

    settings = get_settings()
    if settings.broker_url is None:
        sys.exit("BROKER_URL is not set: a node pulls its work from the backend's broker "
                 "(redis://:password@host:port/0); see docs/NODES.md")
    workers = settings.worker_count(visible_gpus(settings.cuda_visible_devices))
    instance = uuid.uuid4().hex
    redis = ca.redis_client(settings)  # the main process's client, its signal handlers' too
    name = ca.claim_name(redis, args.name or socket.gethostname(), instance)
    node = Node(name, instance, f"{name}@{socket.gethostname()}", workers, settings)
    tasks.attach(node, redis)
    backend_model = redis.get(ca.MODEL)
    if backend_model and backend_model != settings.model_id:
        log.error("the backend runs MODEL_ID=%r but this node runs %r: it will be given no work until they match",
                  backend_model, settings.model_id)
    log.info("node %s: %d GPU process(es), model %s", name, workers, settings.model_id)
    app = ca.configure(settings)
    try:
        app.worker_main(["worker", "--pool=prefork", f"--concurrency={workers}", f"--hostname={node.hostname}",
                         f"--queues={ca.node_queue(name)}", "--loglevel=INFO", "--optimization=fair",
                         "--without-gossip", "--without-mingle"])
    finally:
        _release_name(redis, name, instance)
    if node.name_lost.value:  # its GPU processes stopped it: start again, as a new node with a free name
        log.error("node name %s was taken by another node while this one was cut off; starting again", name)
        os.execv(sys.executable, [sys.executable, "-m", "backend.node", *(sys.argv[1:] if argv is None else argv)])
    failed = _load_errors(redis, name, workers)
    if failed:
        sys.exit(f"node {name} stopped: {failed[0]}")


def _load_errors(redis, name: str, workers: int) -> list[str]:
    """What the node's GPU processes said when they could not load the model (from their last heartbeats)."""
    try:
        beats = redis.hmget(ca.WORKERS, [f"{name}/{i}" for i in range(workers)])
    except Exception:
        return []
    return [json.loads(b)["error"] for b in beats if b and json.loads(b).get("error")]


def _release_name(redis, name: str, instance: str) -> None:
    """A node that stops cleanly frees its name at once (one that dies frees it STALE_S later)."""
    try:
        if redis.get(ca.name_key(name)) == instance:
            redis.delete(ca.name_key(name))
    except Exception as e:
        log.warning("node name %s not released (%s); it is free again in %d s", name, e, ca.STALE_S)


if __name__ == "__main__":
    main()
