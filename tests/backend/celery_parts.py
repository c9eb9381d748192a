"""Real parts for the EXECUTOR=celery tests: Debian's redis-server with a password on a free port, GPU nodes
(`python -m backend.node`) in processes of their own (both from backend.tools.celery_local, which the bench
shares), and a cluster of both around a celery backend."""

import json
import os
import re
import uuid
from collections import Counter
from pathlib import Path

import pytest

from backend.tools import celery_local
from backend.tools.celery_local import wait_until
from tests.conftest import s3_env
from tests.factories import SETTINGS_NAMES

PASSWORD = "celery-test-password-0123"
MADE = re.compile(r"job (\w+) image (\d+) made")


class RedisServer(celery_local.RedisServer):
    def __init__(self, data_dir: Path, password: str | None = None):
        # A password of its own: a client left from an earlier module (a backend still retrying its broker)
        # cannot talk to a later Redis that happens to get the same port.
        super().__init__(data_dir, password or f"{PASSWORD}-{uuid.uuid4().hex[:8]}")


class NodeProcess(celery_local.NodeProcess):
    def made(self) -> Counter:
        """(job id, index) -> how many times this node generated and stored that image."""
        return Counter((job, int(index)) for job, index in MADE.findall(self.log()))


class Cluster:
    """A celery backend, its Redis and its nodes, sharing one storage prefix and one model."""

    def __init__(self, make_backend, redis_server: RedisServer, s3, tiny_model: Path, log_dir: Path,
                 upscaler_model: Path):
        self.make_backend, self.redis, self.log_dir = make_backend, redis_server, log_dir
        self.storage_env = s3_env(s3, f"celery-{uuid.uuid4().hex[:8]}")
        self.model, self.upscaler_model = str(tiny_model), str(upscaler_model)
        self.nodes: list[NodeProcess] = []
        self.backend = None
        self.backends: list = []

    def node_env(self, **extra) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if k not in SETTINGS_NAMES + ("EXECUTOR", "BROKER_URL")}
        return base | self.storage_env | {"MODEL_ID": self.model, "DEVICE": "cpu", "WORKERS": "1",
                                          "BROKER_URL": self.redis.url, "LOCAL_UPSCALER_MODEL": self.upscaler_model,
                                          "HF_HUB_OFFLINE": "1"} | extra

    def start_node(self, name: str, **extra) -> NodeProcess:
        node = NodeProcess(name, self.node_env(**extra), self.log_dir).start()
        self.nodes.append(node)
        return node

    def start_backend(self, wait_for: str = "ok", **extra):
        self.backend = self.make_backend(wait_for=wait_for, EXECUTOR="celery", BROKER_URL=self.redis.url,
                                         MODEL_ID=self.model, UPSCALER="local", **self.storage_env | extra)
        self.backends.append(self.backend)
        return self.backend

    def beats(self) -> dict[str, dict]:
        return {k: json.loads(v) for k, v in self.redis.client().hgetall("showroom:workers").items()}

    def made(self, job_id: str) -> Counter:
        total = Counter()
        for node in self.nodes:
            total.update(node.made())
        return Counter({index: n for (job, index), n in total.items() if job == job_id})

    def stop(self) -> None:
        """Its backends too: make_backend would keep them running to the session's end, still reading a broker
        that is gone (or, on a reused port, another module's)."""
        for part in (*self.backends, *self.nodes):
            part.stop()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cluster(make_backend, redis_server, s3, tiny_model, tmp_path_factory, request):
    """Two nodes of one worker each (node-a, node-b) and a celery backend waiting for both; UPSCALER=local
    (a tiny Swin2SR) runs on the nodes. A test module's BACKEND_ENV adds to the backend's settings."""
    from tests.factories import save_tiny_swin2sr

    upscaler = save_tiny_swin2sr(tmp_path_factory.mktemp("celery-swin2sr"))
    parts = Cluster(make_backend, redis_server, s3, tiny_model, tmp_path_factory.mktemp("celery-logs"), upscaler)
    parts.start_node("node-a")
    parts.start_node("node-b")
    try:
        parts.start_backend(**getattr(request.module, "BACKEND_ENV", {}))
        wait_until(lambda: sorted(w["id"] for w in parts.backend.get("/health").json()["workers"]
                                  if w["state"] == "ready") == ["node-a/0", "node-b/0"], 120, 0.3, "both nodes ready")
        yield parts
    finally:
        parts.stop()
