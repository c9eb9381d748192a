"""docker/vast.py autoscale against the vast.ai stand-in (which also serves the backend's /health), with a fake
clock: the exact requests each round sends, what it prints, and that it carries on after a failure."""

import io
import json
import os
import subprocess
import sys

import pytest

from tests.deploy.vast_standin import VastStandIn, load_launcher
from tests.factories import REPO

VAST_KEY, API_KEY, S3_SECRET = "vast-key-0123456789", "backend-key-abcdef", "s3-secret-zyxwvu"
REDIS_PASSWORD = "redis-pass-7766"
BROKER = f"rediss://:{REDIS_PASSWORD}@broker.example.com:6380/0?ssl_cert_reqs=required"
OFFER = {"id": 1001, "num_gpus": 1, "gpu_name": "RTX 4090", "gpu_ram": 24564, "dph_total": 0.35,
         "reliability": 0.995, "cuda_max_good": 12.8, "geolocation": "Norway"}
T0 = 1_700_000_000.0
SECRET_ENV = [["BROKER_URL", BROKER], ["AWS_SECRET_ACCESS_KEY", S3_SECRET]]  # as vast lists a node's settings

vast_py = load_launcher()
vast_env = load_launcher("vast_env")
vast_instance = load_launcher("vast_instance")


class Stop(Exception):
    """Raised by the fake sleep to end the autoscale loop after some rounds."""


class FakeTime:
    def __init__(self, now: float = T0, rounds: int | None = None):
        self.now, self.rounds = now, rounds

    def wall(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        if self.rounds is not None:
            self.rounds -= 1
            if self.rounds <= 0:
                raise Stop


@pytest.fixture
def vast():
    with VastStandIn() as standin:
        standin.offers = [OFFER]
        yield standin


@pytest.fixture
def env_file(tmp_path):
    path = tmp_path / "node.env"
    path.write_text(f"API_KEY={API_KEY}\nBROKER_URL={BROKER}\nSTORAGE_URL=s3://shots/showroom\n"
                    f"AWS_ACCESS_KEY_ID=AKIDEXAMPLE\nAWS_SECRET_ACCESS_KEY={S3_SECRET}\nMODEL_ID=my/model\n")
    return path


def autoscale(vast, env_file, *extra, fake=None, once=True):
    out, fake = io.StringIO(), fake or FakeTime()
    argv = ["--api-url", vast.api, "autoscale", "--backend-url", f"http://127.0.0.1:{vast.port}",
            "--env-file", str(env_file), "--image", "img:1", "--max", "2", "--idle-minutes", "10",
            *(["--once"] if once else []), *extra]
    try:
        code = vast_py.main(argv, environ={"VAST_API_KEY": VAST_KEY}, out=out, wall=fake.wall, sleep=fake.sleep)
    except Stop:
        code = None
    text = out.getvalue()
    for secret in (VAST_KEY, API_KEY, S3_SECRET, REDIS_PASSWORD):
        assert secret not in text
    return code, text


def node(vast, instance_id, name, intended="running", actual="running", idle_since=None):
    label = f"showroom-node:{name}" + (f" idle-since={int(idle_since)}" if idle_since is not None else "")
    vast.add_instance(instance_id, label, intended, actual, extra_env=SECRET_ENV)


def health(pending=0, **workers):
    return {"status": "ok", "workers": [{"id": w.replace("_", "/"), "device": "cuda:0", "state": s}
                                        for w, s in workers.items()], "queue": {"pending": pending}}


def changes(vast):
    """The requests that change something: (method, path, body)."""
    return [(s.method, s.path, s.body) for s in vast.seen if s.method != "GET" and s.path != "/api/v0/bundles/"]


def test_work_waits_and_no_gpu_free_starts_our_stopped_node(vast, env_file):
    node(vast, 101, "n1")
    node(vast, 102, "n2", "stopped", "stopped")
    vast.add_instance(103, "someone's training job", "stopped", "stopped")
    vast.health = [health(2, n1_0="busy")]
    code, out = autoscale(vast, env_file)
    assert code == 0, out
    assert "2 images wait and no GPU is free: starting node n2 (stopped)" in out
    assert changes(vast) == [("PUT", "/api/v0/instances/102/", {"state": "running"})]
    listing, backend = vast.seen[0], vast.seen[1]
    assert (listing.method, listing.path, listing.auth) == ("GET", "/api/v0/instances/", f"Bearer {VAST_KEY}")
    assert (backend.path, backend.auth) == ("/health", f"Bearer {API_KEY}"), "the backend's key, never vast's"
    assert vast.fleet[102]["intended_status"] == "running" and vast.fleet[103]["intended_status"] == "stopped"


def test_none_stopped_rents_a_node_like_up_role_node_then_waits_for_it(vast, env_file):
    node(vast, 101, "node-1")
    vast.health = [health(1, **{"node-1_0": "busy"})]
    code, out = autoscale(vast, env_file)
    assert code == 0, out
    assert "1 image waits and no GPU is free and none of ours is stopped: renting a new node node-2" in out
    query = next(s.body for s in vast.seen if s.path == "/api/v0/bundles/")
    assert "direct_port_count" not in query and query["num_gpus"] == {"eq": 1}
    (method, path, body), = changes(vast)
    assert (method, path) == ("PUT", "/api/v0/asks/1001/")
    assert body["label"] == "showroom-node:node-2" and body["image"] == "img:1" and body["runtype"] == "ssh"
    assert body["env"] == {"BROKER_URL": BROKER, "STORAGE_URL": "s3://shots/showroom",
                           "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": S3_SECRET,
                           "MODEL_ID": "my/model", "SHOWROOM_ROLE": "node", "SHOWROOM_NODE_NAME": "node-2"}, \
        "no API key, no port"
    assert body["onstart"] == vast_instance.onstart_script()
    assert "created instance 4242 for node node-2" in out
    assert "warning" not in out, "the broker's certificate is checked: nothing to warn about"

    # the next round (a fresh process, as cron runs it) finds it in vast's list, still provisioning
    vast.seen.clear()
    code, out = autoscale(vast, env_file)
    assert code == 0
    assert "node node-2 is starting (asked to run, not taking work yet): waiting for it" in out
    assert changes(vast) == []


def test_at_max_nothing_is_started_and_it_says_why(vast, env_file):
    node(vast, 101, "n1")
    node(vast, 102, "n2")
    node(vast, 103, "n3", "stopped", "stopped")
    vast.health = [health(4, n1_0="busy", n2_0="busy")]
    code, out = autoscale(vast, env_file)
    assert code == 0
    assert "4 images wait and no GPU is free, but 2 nodes of ours run and --max is 2: starting none" in out
    assert changes(vast) == []


def test_idle_nodes_are_stopped_after_idle_minutes_but_not_under_min(vast, env_file):
    node(vast, 101, "n1")
    node(vast, 102, "n2")
    vast.health = [health(0, n1_0="ready", n2_0="ready")]
    fake = FakeTime()
    code, out = autoscale(vast, env_file, "--min", "1", fake=fake)
    assert code == 0
    assert changes(vast) == [("PUT", "/api/v0/instances/101/", {"label": f"showroom-node:n1 idle-since={int(T0)}"}),
                             ("PUT", "/api/v0/instances/102/", {"label": f"showroom-node:n2 idle-since={int(T0)}"})]

    fake.now += 6 * 60
    vast.seen.clear()
    code, out = autoscale(vast, env_file, "--min", "1", fake=fake)
    assert "node n1 has done no work for 6 of 10 minutes" in out and changes(vast) == []

    fake.now += 4 * 60
    vast.seen.clear()
    code, out = autoscale(vast, env_file, "--min", "1", fake=fake)
    assert code == 0
    assert ("node n1 has done no work for 10 of 10 minutes (all 1 GPU ready and nothing waits): stopping node n1 "
            "(it keeps its disk and model cache, and costs only storage)") in out
    assert "node n2 has done no work for 10 of 10 minutes (all 1 GPU ready and nothing waits), but --min is 1: " \
           "keeping it running" in out
    assert changes(vast) == [("PUT", "/api/v0/instances/101/", {"state": "stopped", "label": "showroom-node:n1"})]
    assert ("DELETE", "/api/v0/instances/101/") not in vast.requests(), "stopped, never destroyed"
    assert vast.fleet[101]["intended_status"] == "stopped" and vast.fleet[102]["intended_status"] == "running"


def test_work_arriving_resets_a_nodes_idle_clock(vast, env_file):
    node(vast, 101, "n1", idle_since=T0 - 300)
    vast.health = [health(0, n1_0="busy")]
    code, out = autoscale(vast, env_file)
    assert "node n1 is up again: node n1's idle clock is reset" in out
    assert changes(vast) == [("PUT", "/api/v0/instances/101/", {"label": "showroom-node:n1"})]


def test_a_node_still_starting_is_not_free_and_not_started_or_stopped_again(vast, env_file):
    node(vast, 101, "n1", "running", "loading", idle_since=T0 - 3600)
    node(vast, 102, "n2", "stopped", "stopped")
    vast.health = [health(3)]
    code, out = autoscale(vast, env_file)
    assert "3 images wait and no GPU is free; node n1 is starting" in out and "waiting for it" in out
    assert changes(vast) == [("PUT", "/api/v0/instances/101/", {"label": "showroom-node:n1"})]  # its old idle mark

    vast.seen.clear()
    vast.fleet[101]["actual_status"] = "running"
    vast.health = [health(0, n1_0="starting")]  # loading its model
    code, out = autoscale(vast, env_file, "--idle-minutes", "0")
    assert code == 0 and changes(vast) == []


def test_api_errors_are_retried_next_round_without_a_crash(vast, env_file):
    node(vast, 101, "n1")
    node(vast, 102, "n2", "stopped", "stopped")
    vast.health = [health(2, n1_0="busy")]
    vast.fail("GET", "/api/v0/instances/")          # round 1: vast's list fails
    vast.fail("PUT", "/api/v0/instances/102/", 503)  # round 2: the start is refused
    fake = FakeTime(rounds=3)
    code, out = autoscale(vast, env_file, "--every", "30", fake=fake, once=False)
    assert code is None, "the loop runs until stopped"
    lines = out.splitlines()
    assert any("vast.ai's instance list failed" in line and "answered 500: try again later" in line
               and "trying again next round" in line for line in lines)
    assert any("answered 503" in line and "trying again next round" in line for line in lines)
    starts = [s for s in vast.seen if (s.method, s.path) == ("PUT", "/api/v0/instances/102/")]
    assert len(starts) == 2 and vast.fleet[102]["intended_status"] == "running", "started on the third round"
    assert fake.now == T0 + 90


def test_an_unexpected_error_in_a_round_is_reported_and_the_loop_goes_on(vast, env_file):
    vast.add_instance(101, "showroom-node:n1", "running", "running", id="not-a-number")
    vast.health = [health(0)]
    code, out = autoscale(vast, env_file, fake=FakeTime(rounds=2), once=False)
    assert code is None
    assert out.count("this round failed (ValueError") == 2 and out.count("trying again next round") == 2


def test_ctrl_c_ends_the_loop_cleanly_and_leaves_the_nodes(vast, env_file):
    node(vast, 101, "n1")
    vast.health = [health(0, n1_0="busy")]

    class CtrlC(FakeTime):
        def sleep(self, seconds):
            raise KeyboardInterrupt

    code, out = autoscale(vast, env_file, fake=CtrlC(), once=False)
    assert code == 0 and out.splitlines()[-1] == "autoscale ended; the nodes stay as they are"
    assert changes(vast) == []


def test_a_backend_that_does_not_answer_changes_nothing(vast, env_file):
    node(vast, 101, "n1", idle_since=T0 - 3600)
    vast.health = [{"status": "ok"}]  # not Showroom's /health
    code, out = autoscale(vast, env_file)
    assert code == vast_env.EXIT_API
    assert "is this Showroom's /health?" in out and "nothing is started or stopped this round" in out
    assert changes(vast) == []


def test_failed_rent_is_reported_and_tried_next_round(vast, env_file):
    vast.offers = []
    vast.health = [health(1)]
    code, out = autoscale(vast, env_file)
    assert code == vast_env.EXIT_API
    assert "no offer matches" in out and "trying again next round" in out


def test_dry_run_prints_decisions_and_requests_and_sends_only_reads(vast, env_file):
    node(vast, 101, "node-1")
    vast.health = [health(2, **{"node-1_0": "busy"})]
    code, out = autoscale(vast, env_file, "--dry-run")
    assert code == 0, out
    assert {(s.method, s.path) for s in vast.seen} == {("GET", "/api/v0/instances/"), ("GET", "/health"),
                                                       ("POST", "/api/v0/bundles/")}
    assert "renting a new node node-2" in out
    line = next(line for line in out.splitlines() if line.startswith(f"DRY-RUN PUT {vast.api}/asks/1001/"))
    body = json.loads(line.split(" ", 3)[3])
    assert body["label"] == "showroom-node:node-2" and body["env"]["BROKER_URL"] == "***"


def test_dry_run_stop_is_printed_not_sent(vast, env_file):
    node(vast, 101, "n1", idle_since=T0 - 3600)
    vast.health = [health(0, n1_0="ready")]
    code, out = autoscale(vast, env_file, "--dry-run")
    assert code == 0 and changes(vast) == []
    assert (f'DRY-RUN PUT {vast.api}/instances/101/ {{"label": "showroom-node:n1", "state": "stopped"}}'
            in out.splitlines())


@pytest.mark.parametrize("extra, settings, message", [
    (["--min", "3"], None, "need 0 <= --min <= --max"),
    ([], "STORAGE_URL=s3://shots\n", "set BROKER_URL"),
])
def test_bad_settings_are_refused_before_any_request(vast, env_file, extra, settings, message):
    if settings:
        env_file.write_text(settings)
    code, out = autoscale(vast, env_file, *extra)
    assert code == vast_env.EXIT_CONFIG and message in out
    assert vast.seen == []


def test_the_command_line_once_and_its_help(vast, env_file):
    node(vast, 102, "n2", "stopped", "stopped")
    vast.health = [health(1)]
    run = subprocess.run([sys.executable, "docker/vast.py", "--api-url", vast.api, "autoscale", "--once",
                          "--backend-url", f"http://127.0.0.1:{vast.port}", "--env-file", str(env_file),
                          "--image", "img:1", "--dry-run"],
                         cwd=REPO, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "VAST_API_KEY": VAST_KEY})
    assert run.returncode == 0, run.stderr
    assert "1 image waits and no GPU is free: starting node n2 (stopped)" in run.stdout
    assert f'DRY-RUN PUT {vast.api}/instances/102/ {{"state": "running"}}' in run.stdout
    helped = subprocess.run([sys.executable, "docker/vast.py", "autoscale", "--help"], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert "costs only storage" in helped.stdout and "not destroyed" in helped.stdout
