"""docker/compose.yaml: the services, and every environment name is a contract name or documented."""

import re

import pytest
import yaml

from tests.factories import REPO

CONTRACT_NAMES = {"MODEL_ID", "DEVICE", "WORKERS", "STORAGE_URL", "S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                  "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "API_KEY", "BACKEND_URL", "UPSCALER",
                  "REPLICATE_API_TOKEN", "REPLICATE_BASE_URL", "EXECUTOR", "BROKER_URL", "BG_REMOVAL_MODEL",
                  "WEBHOOK_SECRET", "WEBHOOK_ALLOWED_HOSTS", "APP_PASSWORD"}  # CONTRACT.md's settings table, whole


class ComposeLoader(yaml.SafeLoader):
    """PyYAML plus Compose's !reset / !override tags (used by the CPU override)."""


ComposeLoader.add_constructor("!reset", lambda loader, node: None)
ComposeLoader.add_constructor("!override", lambda loader, node: loader.construct_mapping(node))


def load(name: str) -> dict:
    return yaml.load((REPO / "docker" / name).read_text(), Loader=ComposeLoader)


@pytest.fixture(scope="module")
def compose() -> dict:
    return load("compose.yaml")


def documented_names() -> set[str]:
    """Names in the first column of docs/DEPLOY.md's "Settings beyond the contract" table."""
    text = (REPO / "docs" / "DEPLOY.md").read_text()
    section = text.split("## Settings beyond the contract", 1)[1].split("\n## ", 1)[0]
    return {name for row in section.splitlines() if row.startswith("| `")
            for name in re.findall(r"`([A-Z][A-Z0-9_]*)`", row.split("|")[1])}


def environment_names(service: dict) -> set[str]:
    env = service.get("environment") or {}
    return set(env) if isinstance(env, dict) else {item.split("=", 1)[0] for item in env}


def test_compose_has_the_whole_stack(compose):
    assert set(compose["services"]) == {"s3", "backend", "frontend"}
    assert compose["services"]["backend"]["build"] == {"context": "..", "dockerfile": "Dockerfile"}
    assert compose["services"]["frontend"]["build"] == {"context": "..", "dockerfile": "docker/frontend.Dockerfile"}


def test_compose_names_are_contract_names_or_documented(compose):
    documented = documented_names()
    assert documented, "docs/DEPLOY.md lists no settings beyond the contract"
    assert not documented & CONTRACT_NAMES
    used = set().union(*(environment_names(s) for s in compose["services"].values()))
    used |= set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", (REPO / "docker" / "compose.yaml").read_text()))
    used |= environment_names(load("compose.cpu.yaml")["services"]["backend"])
    assert used - CONTRACT_NAMES - documented == set()
    assert used & CONTRACT_NAMES >= {"STORAGE_URL", "S3_ENDPOINT_URL", "API_KEY", "BACKEND_URL"}


def test_compose_store_creates_the_bucket_both_parts_use(compose):
    s3 = compose["services"]["s3"]
    assert s3["image"].startswith("chrislusf/seaweedfs:") and not s3["image"].endswith(":latest")
    assert s3["command"][0] == "mini"
    bucket = next(arg.split("=", 1)[1] for arg in s3["command"] if arg.startswith("-bucket="))
    assert "s3-data:/data" in s3["volumes"] and "-dir=/data" in s3["command"]
    assert environment_names(s3) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    for name in ("backend", "frontend"):
        env = compose["services"][name]["environment"]
        assert env["STORAGE_URL"] == f"s3://{bucket}"
        assert env["S3_ENDPOINT_URL"] == "http://s3:8333"
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):  # the store adopts the keys both parts use
            assert env[key].startswith(f"${{{key}:?") and s3["environment"][key].startswith(f"${{{key}:?")


def test_compose_backend_reserves_the_gpus_and_keeps_the_model_cache(compose):
    backend = compose["services"]["backend"]
    devices = backend["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert "models:/models" in [v.split(" ")[0] for v in backend["volumes"]]  # HF_HOME in the image
    assert backend["ports"] == ["8000:8000"]
    assert backend["environment"]["PUBLIC_BIND"] == "true"
    assert backend["environment"]["API_KEY"].startswith("${API_KEY:?")  # refuses to start without a key
    assert set(compose["volumes"]) == {"s3-data", "models"}


def test_compose_frontend_reaches_the_backend(compose):
    frontend = compose["services"]["frontend"]
    assert frontend["environment"]["BACKEND_URL"] == "http://backend:8000"
    assert frontend["environment"]["API_KEY"].startswith("${API_KEY")
    assert frontend["ports"] == ["8501:8501"]


def test_compose_cpu_override_drops_the_gpu_reservation():
    override = load("compose.cpu.yaml")
    assert override == {"services": {"backend": {"deploy": None, "environment": {"DEVICE": "cpu"}}}}
    assert "deploy: !reset {}" in (REPO / "docker" / "compose.cpu.yaml").read_text()


def test_compose_nodes_override_sends_work_through_a_password_protected_persistent_redis():
    nodes = load("compose.nodes.yaml")
    redis, backend, node = (nodes["services"][name] for name in ("redis", "backend", "node"))
    assert "--requirepass" in redis["command"] and redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert redis["volumes"] == ["redis-data:/data"] and "ports" not in redis, "not published: nodes elsewhere use TLS"
    assert backend["environment"]["EXECUTOR"] == "celery" and backend["deploy"] is None
    assert backend["environment"]["BROKER_URL"].startswith("redis://:${REDIS_PASSWORD:?")
    assert node["command"] == ["python", "-m", "backend.node"] and node["environment"]["BROKER_URL"] == \
        backend["environment"]["BROKER_URL"]
    assert node["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    used = set().union(*(environment_names(s) for s in nodes["services"].values()))
    assert used <= CONTRACT_NAMES | documented_names(), used - CONTRACT_NAMES - documented_names()
    assert "REDIS_PASSWORD" in documented_names()
