"""docker/vast.py against a local stand-in of the vast.ai API: the exact requests, and every way it fails."""

import io
import json
import os
import subprocess
import sys

import pytest

from tests.deploy.vast_standin import VastStandIn, load_launcher
from tests.factories import REPO

VAST_KEY, API_KEY, S3_SECRET = "vast-key-0123456789", "backend-key-abcdef", "s3-secret-zyxwvu"
OFFER = {"id": 1001, "num_gpus": 1, "gpu_name": "RTX 4090", "gpu_ram": 24564, "dph_total": 0.35,
         "reliability": 0.995, "cuda_max_good": 12.8, "geolocation": "Norway"}
EXPECTED_QUERY = {
    "verified": {"eq": True}, "external": {"eq": False}, "rentable": {"eq": True}, "rented": {"eq": False},
    "num_gpus": {"eq": 1}, "gpu_ram": {"gte": 16000.0}, "dph_total": {"lte": 0.6}, "reliability": {"gte": 0.98},
    "cuda_max_good": {"gte": 12.8}, "disk_space": {"gte": 40}, "direct_port_count": {"gte": 1},
    "order": [["dph_total", "asc"]], "type": "on-demand", "limit": 10, "allocated_storage": 40,
}


vast_py = load_launcher()
vast_env = load_launcher("vast_env")
vast_instance = load_launcher("vast_instance")


@pytest.fixture
def vast():
    with VastStandIn() as standin:
        standin.offers = [OFFER, OFFER | {"id": 1002, "dph_total": 0.41}]
        yield standin


@pytest.fixture
def env_file(tmp_path):
    path = tmp_path / "vast.env"
    path.write_text(f"# backend settings\nAPI_KEY={API_KEY}\nSTORAGE_URL=s3://shots/showroom\n"
                    f"S3_ENDPOINT_URL=https://s3.example.com\nAWS_ACCESS_KEY_ID=AKIDEXAMPLE\n"
                    f"export AWS_SECRET_ACCESS_KEY=\"{S3_SECRET}\"\nIDLE_STOP_MINUTES=20 # stop when idle\n")
    return path


class FakeTime:
    """clock/sleep for main(): sleeping advances the clock, so a 30-minute wait takes no real time."""

    def __init__(self):
        self.now, self.sleeps = 0.0, 0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.sleeps += 1


def run(vast, *argv, environ=None, fake_time=None):
    out, fake_time = io.StringIO(), fake_time or FakeTime()
    environ = {"VAST_API_KEY": VAST_KEY} if environ is None else environ
    code = vast_py.main(["--api-url", vast.api, *argv], environ=environ, out=out,
                        clock=fake_time.clock, sleep=fake_time.sleep)
    return code, out.getvalue()


def assert_no_secret(text: str) -> None:
    for secret in (VAST_KEY, API_KEY, S3_SECRET):
        assert secret not in text


def expected_create_body() -> dict:
    env = {"API_KEY": API_KEY, "STORAGE_URL": "s3://shots/showroom", "S3_ENDPOINT_URL": "https://s3.example.com",
           "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": S3_SECRET, "IDLE_STOP_MINUTES": "20",
           "PUBLIC_BIND": "true", "-p 8000:8000": "1"}
    return {"client_id": "me", "image": "ghcr.io/me/showroom:1", "disk": 40, "label": "showroom", "env": env,
            "runtype": "ssh", "onstart": vast_instance.onstart_script(), "user": "root"}


def test_up_dry_run_sends_only_the_search_and_prints_the_create(vast, env_file):
    # the real command line, in its own process, as a user runs it
    out = subprocess.run([sys.executable, "docker/vast.py", "--api-url", vast.api, "--dry-run", "up",
                          "--image", "ghcr.io/me/showroom:1", "--env-file", str(env_file)],
                         cwd=REPO, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "VAST_API_KEY": VAST_KEY})
    assert out.returncode == 0, out.stderr
    assert vast.requests() == [("POST", "/api/v0/bundles/")]
    assert vast.seen[0].auth == f"Bearer {VAST_KEY}"
    assert vast.seen[0].body == EXPECTED_QUERY
    line = next(line for line in out.stdout.splitlines() if line.startswith("DRY-RUN PUT"))
    method, url, body = line.removeprefix("DRY-RUN ").split(" ", 2)
    assert url == f"{vast.api}/asks/1001/"
    shown = expected_create_body()
    shown["env"] |= {"API_KEY": "***", "AWS_ACCESS_KEY_ID": "***", "AWS_SECRET_ACCESS_KEY": "***"}
    assert json.loads(body) == shown
    assert_no_secret(out.stdout + out.stderr)


def test_up_creates_waits_for_health_and_prints_the_url(vast, env_file):
    vast.instances = [{"actual_status": None}, {"actual_status": "loading", "status_msg": "pulling"},
                      vast.running_instance()]
    vast.health = [{"status": "starting", "detail": "loading the model"}, {"status": "ok"}]
    code, out = run(vast, "up", "--image", "ghcr.io/me/showroom:1", "--env-file", str(env_file), "--poll", "5")
    assert code == 0, out
    assert vast.requests() == [("POST", "/api/v0/bundles/"), ("PUT", "/api/v0/asks/1001/")] + [
        ("GET", "/api/v0/instances/4242/"), ("GET", "/api/v0/instances/4242/"),
        ("GET", "/api/v0/instances/4242/"), ("GET", "/health"), ("GET", "/api/v0/instances/4242/"), ("GET", "/health")]
    create = vast.seen[1]
    assert create.auth == f"Bearer {VAST_KEY}" and create.body == expected_create_body()
    assert all(s.auth is None for s in vast.seen if s.path == "/health")  # the vast key never goes to the box
    assert out.strip().splitlines()[-1] == f"BACKEND_URL=http://127.0.0.1:{vast.port}"
    assert "offer 1001: 1x RTX 4090 25 GB, $0.350/h" in out
    assert "python docker/vast.py destroy 4242" in out
    assert_no_secret(out)


def test_up_no_offers_fails_clearly_and_rents_nothing(vast, env_file):
    vast.offers = []
    code, out = run(vast, "up", "--image", "img:1", "--env-file", str(env_file), "--max-price", "0.1")
    assert code == vast_env.EXIT_NO_OFFER
    assert "no offer matches: 1 GPU(s), >= 16 GB VRAM, <= $0.1/h" in out
    assert vast.requests() == [("POST", "/api/v0/bundles/")]


def test_up_failed_create_fails_clearly_without_leaking_keys(vast, env_file):
    # the API's message even echoes a key: it must come out redacted
    vast.create_answer = (400, {"success": False, "error": "invalid_args", "msg": f"offer taken ({VAST_KEY})"})
    code, out = run(vast, "up", "--image", "img:1", "--env-file", str(env_file))
    assert code == vast_env.EXIT_CREATE
    assert "could not rent offer 1001" in out and "answered 400: offer taken (***)" in out
    assert "nothing was created" in out
    assert vast.requests() == [("POST", "/api/v0/bundles/"), ("PUT", "/api/v0/asks/1001/")]
    assert_no_secret(out)


def test_up_never_healthy_gives_up_in_time_and_destroys(vast, env_file):
    vast.instances = [vast.running_instance()]
    vast.health = [{"status": "starting", "detail": "loading the model"}]
    fake_time = FakeTime()
    code, out = run(vast, "up", "--image", "img:1", "--env-file", str(env_file), "--timeout", "600",
                    "--poll", "15", fake_time=fake_time)
    assert code == vast_env.EXIT_UNHEALTHY
    assert "not healthy after 600 s; last seen: backend is starting: loading the model" in out
    assert fake_time.now <= 600 and fake_time.sleeps == 40
    assert vast.requests()[-1] == ("DELETE", "/api/v0/instances/4242/")
    assert "destroyed instance 4242" in out


def test_up_never_healthy_keeps_the_instance_when_asked(vast, env_file):
    vast.instances = [{"actual_status": "loading", "status_msg": "pulling image"}]
    code, out = run(vast, "up", "--image", "img:1", "--env-file", str(env_file), "--timeout", "60",
                    "--keep-on-failure")
    assert code == vast_env.EXIT_UNHEALTHY
    assert "last seen: instance is loading: pulling image" in out and "is kept" in out
    assert ("DELETE", "/api/v0/instances/4242/") not in vast.requests()


def test_up_backend_error_fails_at_once(vast, env_file):
    vast.instances = [vast.running_instance()]
    vast.health = [{"status": "error", "detail": "no worker could start: CUDA driver too old"}]
    fake_time = FakeTime()
    code, out = run(vast, "up", "--image", "img:1", "--env-file", str(env_file), fake_time=fake_time)
    assert code == vast_env.EXIT_UNHEALTHY
    assert "the backend reports an error: no worker could start: CUDA driver too old" in out
    assert fake_time.sleeps == 0 and vast.requests()[-1] == ("DELETE", "/api/v0/instances/4242/")


def test_up_unhealthy_wait_in_real_time_is_bounded(vast, env_file):
    vast.instances = [{"actual_status": "loading"}]
    out = subprocess.run([sys.executable, "docker/vast.py", "--api-url", vast.api, "up", "--image", "img:1",
                          "--env-file", str(env_file), "--timeout", "1", "--poll", "0.2"],
                         cwd=REPO, capture_output=True, text=True, timeout=30,
                         env={**os.environ, "VAST_API_KEY": VAST_KEY})
    assert out.returncode == vast_env.EXIT_UNHEALTHY
    assert "error: not healthy after 1 s" in out.stderr
    assert 3 <= vast.requests().count(("GET", "/api/v0/instances/4242/")) <= 7


@pytest.mark.parametrize("command, method, body", [
    ("stop", "PUT", {"state": "stopped"}), ("start", "PUT", {"state": "running"}), ("destroy", "DELETE", None)])
def test_stop_start_destroy_send_the_exact_request(vast, command, method, body):
    code, out = run(vast, command, "77")
    assert code == 0 and f"instance 77: {command} requested" in out
    assert [(s.method, s.path, s.auth, s.body) for s in vast.seen] == [
        (method, "/api/v0/instances/77/", f"Bearer {VAST_KEY}", body)]


def test_dry_run_stop_sends_nothing(vast):
    code, out = run(vast, "--dry-run", "stop", "77")
    assert code == 0 and vast.seen == []
    assert out.strip() == f'DRY-RUN PUT {vast.api}/instances/77/ {{"state": "stopped"}}'


def test_offers_lists_cheapest_first_as_the_api_orders_them(vast):
    code, out = run(vast, "offers", "--gpus", "2", "--min-vram", "40", "--gpu-name", "A100_SXM4")
    assert code == 0
    assert vast.seen[0].body["num_gpus"] == {"eq": 2} and vast.seen[0].body["gpu_ram"] == {"gte": 40000.0}
    assert vast.seen[0].body["gpu_name"] == {"eq": "A100 SXM4"}
    assert [line.split(":")[0] for line in out.splitlines()] == ["offer 1001", "offer 1002"]


@pytest.mark.parametrize("settings, message", [
    ("STORAGE_URL=s3://b\n", "set API_KEY"),
    (f"API_KEY={API_KEY}\nSTORAGE_URL=file:///data\n", "set STORAGE_URL to s3://"),
    (f"API_KEY={API_KEY}\nnot a setting\n", "expected NAME=value"),
])
def test_up_refuses_unsafe_settings_before_any_request(vast, tmp_path, settings, message):
    path = tmp_path / "bad.env"
    path.write_text(settings)
    code, out = run(vast, "up", "--image", "img:1", "--env-file", str(path), environ={"VAST_API_KEY": VAST_KEY})
    assert code == vast_env.EXIT_CONFIG and message in out
    assert vast.seen == []
    assert API_KEY not in out


def test_missing_vast_key_is_a_clear_error(vast, monkeypatch, tmp_path):
    monkeypatch.setattr(vast_env, "KEY_FILE", tmp_path / "absent")
    code, out = run(vast, "offers", environ={})
    assert code == vast_env.EXIT_CONFIG and "set VAST_API_KEY" in out
    assert vast.seen == []


def test_settings_from_the_shell_fill_what_the_env_file_leaves_out(tmp_path):
    path = tmp_path / "vast.env"
    path.write_text("API_KEY=from-file-123\nSTORAGE_URL=s3://bucket\n")
    env = vast_env.instance_env(path, {"API_KEY": "from-shell-456", "MODEL_ID": "my/model", "HOME": "/root"})
    assert env == {"API_KEY": "from-file-123", "STORAGE_URL": "s3://bucket", "MODEL_ID": "my/model",
                   "PUBLIC_BIND": "true"}


def test_the_contracts_executor_and_webhook_names_come_from_the_shell_but_never_reach_a_node(tmp_path):
    path = tmp_path / "vast.env"
    path.write_text(f"API_KEY=from-file-123\nSTORAGE_URL=s3://bucket\nBROKER_URL={BROKER}\n")
    shell = {"EXECUTOR": "celery", "WEBHOOK_SECRET": "whsec_c2VjcmV0", "WEBHOOK_ALLOWED_HOSTS": "hooks.lan"}
    backend = vast_env.instance_env(path, shell)
    assert {name: backend[name] for name in shell} == shell
    node = vast_env.instance_env(path, shell, role="node", node_name="n1")
    assert not set(shell) & set(node), "a node sends no webhook and is no executor: it is not given their secret"


def test_onstart_sent_is_the_script_without_comments_and_fits_vast():
    script = vast_instance.onstart_script()
    assert len(script) <= vast_instance.ONSTART_LIMIT
    assert script.startswith("#!/bin/sh\n")
    assert not any(line.lstrip().startswith("#") for line in script.splitlines()[1:])
    assert "uvicorn backend.main:app --host 0.0.0.0 --port 8000" in script


# ----- --role node: a GPU node that pulls work from the backend's Redis -----
REDIS_PASSWORD = "redis-pass-7766"
BROKER = f"rediss://:{REDIS_PASSWORD}@broker.example.com:6380/0"


@pytest.fixture
def node_env_file(tmp_path):
    path = tmp_path / "node.env"
    path.write_text(f"API_KEY={API_KEY}\nBROKER_URL={BROKER}\nSTORAGE_URL=s3://shots/showroom\n"
                    f"S3_ENDPOINT_URL=https://s3.example.com\nAWS_ACCESS_KEY_ID=AKIDEXAMPLE\n"
                    f"AWS_SECRET_ACCESS_KEY={S3_SECRET}\nMODEL_ID=stabilityai/stable-diffusion-xl-base-1.0\n"
                    "IDLE_STOP_MINUTES=20\n")
    return path


def test_up_role_node_rents_any_box_sends_no_key_and_opens_no_port(vast, node_env_file):
    vast.instances = [vast.running_instance()]
    vast.health = [{"status": "ok", "workers": [{"id": "shop-node/0", "state": "starting"}]},
                   {"status": "ok", "workers": [{"id": "box/0", "state": "ready"},
                                                {"id": "shop-node/0", "state": "ready"},
                                                {"id": "shop-node/1", "state": "busy"}]}]
    code, out = run(vast, "up", "--role", "node", "--node-name", "shop-node", "--image", "img:1",
                    "--env-file", str(node_env_file), "--backend-url", f"http://127.0.0.1:{vast.port}", "--poll", "5")
    assert code == 0, out
    query, create = vast.seen[0].body, vast.seen[1].body
    assert "direct_port_count" not in query, "a node only connects out: boxes behind NAT will do"
    assert create["env"] == {"BROKER_URL": BROKER, "STORAGE_URL": "s3://shots/showroom",
                             "S3_ENDPOINT_URL": "https://s3.example.com", "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
                             "AWS_SECRET_ACCESS_KEY": S3_SECRET, "MODEL_ID": "stabilityai/stable-diffusion-xl-base-1.0",
                             "SHOWROOM_ROLE": "node", "SHOWROOM_NODE_NAME": "shop-node"}
    assert create["runtype"] == "ssh" and create["onstart"] == vast_instance.onstart_script()
    assert create["label"] == "showroom-node:shop-node", "the label `autoscale` knows its nodes by"
    health = [s for s in vast.seen if s.path == "/health"]
    assert len(health) == 2 and all(s.auth == f"Bearer {API_KEY}" for s in health), "the backend's key, never vast's"
    assert "node shop-node is taking work: shop-node/0, shop-node/1" in out
    assert "BROKER_URL is rediss:// without ?ssl_cert_reqs=required: Showroom checks the certificate anyway" in out
    assert_no_secret(out)
    assert REDIS_PASSWORD not in out


def test_up_role_node_dry_run_hides_the_broker_password(vast, node_env_file):
    code, out = run(vast, "--dry-run", "up", "--role", "node", "--image", "img:1", "--env-file", str(node_env_file))
    assert code == 0, out
    body = json.loads(next(line for line in out.splitlines() if line.startswith("DRY-RUN PUT")).split(" ", 3)[3])
    assert body["env"]["BROKER_URL"] == "***" and body["env"]["SHOWROOM_NODE_NAME"].startswith("vast-")
    assert REDIS_PASSWORD not in out
    assert_no_secret(out)


@pytest.mark.parametrize("broker, extra, message", [
    ("", [], "set BROKER_URL"),
    ("redis://broker.example.com:6379/0", [], "BROKER_URL has no password"),
    (f"redis://:{REDIS_PASSWORD}@localhost:6379/0", [], "points at localhost"),
    (BROKER, ["--runtype", "args"], "--role node needs --runtype ssh"),
])
def test_up_role_node_refuses_a_broker_it_cannot_use_safely(vast, tmp_path, broker, extra, message):
    path = tmp_path / "node.env"
    path.write_text(f"BROKER_URL={broker}\nSTORAGE_URL=s3://shots\n")
    code, out = run(vast, "up", "--role", "node", "--image", "img:1", "--env-file", str(path), *extra,
                    environ={"VAST_API_KEY": VAST_KEY})
    assert code == vast_env.EXIT_CONFIG and message in out, out
    assert vast.seen == []
    assert REDIS_PASSWORD not in out


def test_up_role_node_that_never_reports_is_destroyed(vast, node_env_file):
    vast.instances = [vast.running_instance()]
    vast.health = [{"status": "ok", "workers": [{"id": "other/0", "state": "ready"}]}]
    code, out = run(vast, "up", "--role", "node", "--node-name", "n1", "--image", "img:1", "--env-file",
                    str(node_env_file), "--backend-url", f"http://127.0.0.1:{vast.port}", "--timeout", "60")
    assert code == vast_env.EXIT_UNHEALTHY
    assert "node n1 has not reported" in out and ("DELETE", "/api/v0/instances/4242/") in vast.requests()
