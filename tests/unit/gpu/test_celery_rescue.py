"""Which tasks the backend takes for lost (their node's heartbeats stopped), and the copy it sends."""

import json
from types import SimpleNamespace

import pytest

from backend.gpu import celery_app as ca
from backend.gpu import celery_rescue as rescue
from backend.gpu import executor as ev
from tests.backend import celery_parts

redis_server = celery_parts.redis_server  # a real redis-server for the module

MODEL = "tiny"


def beat(ts: float, task_id: str | None = None, name: str = ca.GENERATE, model: str = MODEL) -> str:
    task = {"id": task_id, "name": name, "queue": "q"} if task_id else None
    return json.dumps({"state": "busy" if task else "ready", "model": model, "task": task, "ts": ts})


def test_a_task_whose_heartbeat_has_not_changed_for_lost_s_by_the_backends_clock_is_lost():
    silence = rescue.Silence()
    beats = {"a/0": beat(5.0, "t1"), "b/0": beat(5.0, "t2")}
    assert silence.lost(beats, MODEL, now=100.0) == [], "first seen now: silent for no time yet"
    beats["b/0"] = beat(9.0, "t2")  # b beats on; a does not
    assert silence.lost(beats, MODEL, now=100.0 + rescue.LOST_S - 1) == []
    beats["b/0"] = beat(13.0, "t2")
    lost = silence.lost(beats, MODEL, now=100.0 + rescue.LOST_S)
    assert lost == [("a/0", {"id": "t1", "name": ca.GENERATE, "queue": "q"})]


def test_a_node_whose_clock_is_far_behind_loses_nothing_while_it_beats():
    silence = rescue.Silence()
    for n in range(10):  # its own stamps are an hour old, but they change every 5 s
        assert silence.lost({"a/0": beat(-3600.0 + 5 * n, "t1")}, MODEL, now=1000.0 + 5 * n) == []


def test_idle_workers_tasks_of_another_model_and_unreadable_heartbeats_are_left_alone():
    silence = rescue.Silence()
    beats = {"a/0": beat(1.0), "b/0": beat(1.0, "t2", model="other"), "c/0": "not json",
             "d/0": json.dumps(["a list"]), "e/0": beat(1.0, "t3", name="other.task")}
    silence.lost(beats, MODEL, now=0.0)
    assert silence.lost(beats, MODEL, now=10 * rescue.LOST_S) == []


def test_a_task_a_fresher_worker_runs_is_not_lost():
    """A GPU process killed alone: Celery hands its task to the successor at once, which beats afresh."""
    silence = rescue.Silence()
    silence.lost({"a/0": beat(1.0, "t1"), "a/1": beat(1.0)}, MODEL, now=0.0)
    assert silence.lost({"a/0": beat(1.0, "t1"), "a/1": beat(40.0, "t1")}, MODEL, now=rescue.LOST_S + 1) == []


def test_a_copy_keeps_only_the_images_still_open_with_their_own_seeds_and_keys():
    payload = {"job_id": "j", "indices": [2, 3, 4], "seeds": [12, 13, 14], "keys": ["k2", "k3", "k4"],
               "preview_keys": ["p2", "p3", "p4"], "prompt": "x"}
    cut = rescue.only_indices(payload, {2, 4})
    assert cut == payload | {"indices": [2, 4], "seeds": [12, 14], "keys": ["k2", "k4"], "preview_keys": ["p2", "p4"]}
    assert payload["indices"] == [2, 3, 4], "the original is left as it was"
    assert rescue.only_indices(payload | {"preview_keys": []}, {3})["preview_keys"] == []


def test_a_heartbeat_names_the_task_by_its_broker_id_name_and_queue():
    request = SimpleNamespace(id="abc", task=ca.TRAIN, kwargs={"target": 50}, delivery_info={"routing_key": "q1"})
    assert rescue.running(request) == {"id": "abc", "name": ca.TRAIN, "queue": "q1"}
    assert rescue.running(SimpleNamespace(id="x", task=ca.UPSCALE, kwargs={}, delivery_info=None))["queue"] is None


class Sent:
    def __init__(self):
        self.tasks = []

    def send_task(self, name, kwargs, task_id, **options):
        self.tasks.append((name, kwargs, task_id))


@pytest.fixture
def client(redis_server):
    client = redis_server.client()
    client.flushdb()
    return client


@pytest.fixture
def parts(client):
    settings = SimpleNamespace(model_id=MODEL, image_timeout_s=60, max_batch=4, node_lost_s=rescue.LOST_S)
    app = Sent()
    return client, app, rescue.Rescue(app, client, settings, "shared", {})


def lose(client, fix, task_id: str, name: str, kwargs: dict) -> None:
    """A worker that ran `task_id` and then fell silent for LOST_S."""
    client.set(rescue.kwargs_key(task_id), json.dumps(kwargs))
    raw = beat(1.0, task_id, name)
    fix.silence.lost({"a/0": raw}, MODEL, now=0.0)
    fix.silence.seen["a/0"] = (raw, -rescue.LOST_S)


def test_a_lost_batch_is_sent_again_with_its_open_images_once_and_the_old_id_superseded(parts):
    client, app, fix = parts
    generate = {"task": {"job_id": "j", "indices": [0, 1], "seeds": [5, 6], "keys": ["k0", "k1"]}, "model_id": MODEL}
    lose(client, fix, "old", ca.GENERATE, generate)
    events = []
    for _ in range(3):  # looked at every 2 s: sent once
        fix.check({"a/0": beat(1.0, "old")}, lambda job, indices: ({1}, False), events.append)
    [(name, kwargs, new_id)] = app.tasks
    assert name == ca.GENERATE and kwargs["task"]["indices"] == [1] and kwargs["task"]["seeds"] == [6]
    assert kwargs["rescues"] == 1 and client.get(rescue.superseded_key("old")) == new_id
    assert events == [ev.ImagesRequeued("j", (1,))]
    assert fix.settled(beat(1.0, "old")) and not fix.settled(beat(1.0, "other"))


def test_a_lost_batch_of_a_canceled_job_is_canceled_not_sent(parts):
    client, app, fix = parts
    lose(client, fix, "old", ca.GENERATE, {"task": {"job_id": "j", "indices": [0]}, "model_id": MODEL})
    events = []
    fix.check({"a/0": beat(1.0, "old")}, lambda job, indices: ({0}, True), events.append)
    assert app.tasks == [] and events == [ev.ImagesCanceled("j", (0,))]


def test_a_task_lost_more_than_max_rescues_times_fails_with_the_reason(parts):
    client, app, fix = parts
    kwargs = {"task": {"job_id": "j", "indices": [0]}, "model_id": MODEL, "rescues": rescue.MAX_RESCUES}
    lose(client, fix, "old", ca.GENERATE, kwargs)
    events = []
    fix.check({"a/0": beat(1.0, "old")}, lambda job, indices: ({0}, False), events.append)
    assert app.tasks == []
    [failed] = events
    assert isinstance(failed, ev.ImageFailed) and f"vanished {rescue.MAX_RESCUES + 1} times" in failed.error
    lose(client, fix, "t", ca.TRAIN, {"task": {"training_id": "tr"}, "model_id": MODEL, "target": 50,
                                        "rescues": rescue.MAX_RESCUES})
    fix.check({"a/0": beat(1.0, "t", ca.TRAIN)}, None, events.append)
    assert isinstance(events[-1], ev.TrainingFailed) and events[-1].training_id == "tr"


def test_a_lost_task_without_its_description_is_left_to_the_broker(parts):
    client, app, fix = parts
    lose(client, fix, "old", ca.UPSCALE, {"request_id": "r"})
    client.delete(rescue.kwargs_key("old"))
    fix.check({"a/0": beat(1.0, "old", ca.UPSCALE)}, None, None)
    assert app.tasks == [] and not client.exists(rescue.superseded_key("old"))


def test_a_chunk_claimed_by_a_lost_task_is_taken_over_by_one_copy_unless_it_was_sent(client):
    assert ca.claim_chunk(client, "k", "t1", rescue.superseded_key)
    assert not ca.claim_chunk(client, "k", "t2", rescue.superseded_key), "t1 holds it and is not lost"
    client.set(rescue.superseded_key("t1"), "t2")
    assert ca.claim_chunk(client, "k", "t2", rescue.superseded_key), "t1 was lost before it sent the chunk"
    assert not ca.claim_chunk(client, "k", "t3", rescue.superseded_key), "t2 holds it now"
    ca.chunk_sent(client, "k", "t2")
    client.set(rescue.superseded_key("t2"), "t3")
    assert not ca.claim_chunk(client, "k", "t3", rescue.superseded_key), "t2 said it sent it before it was lost"
    assert client.get("k") == "sent:t2" and client.ttl("k") > 0


# ----- node names: two nodes never beat under one name -----

def test_a_name_is_renewed_while_it_is_this_nodes_or_nobodys_and_never_taken_from_another(client):
    assert ca.claim_name(client, "box", "first") == "box"
    assert ca.renew_name(client, "box", "first") and client.ttl(ca.name_key("box")) > 0
    client.delete(ca.name_key("box"))  # expired while "first" was cut off from the broker, and nobody took it
    assert ca.renew_name(client, "box", "first") and client.get(ca.name_key("box")) == "first"
    client.delete(ca.name_key("box"))
    assert ca.claim_name(client, "box", "second") == "box"  # taken meanwhile by a node that started
    assert not ca.renew_name(client, "box", "first")
    assert client.get(ca.name_key("box")) == "second"


def test_a_gpu_process_whose_node_name_was_taken_stops_its_node_and_beats_no_more(client, monkeypatch):
    from backend.node import gpu as node_gpu

    stopped = []
    monkeypatch.setattr(node_gpu.os, "kill", lambda pid, sig: stopped.append((pid, sig)))
    gpu = object.__new__(node_gpu.Gpu)  # its fields only: no pipeline, no heartbeat thread
    gpu.node = node_gpu.Node("box", "first", "box@host", 1, SimpleNamespace(model_id=MODEL))
    gpu.settings = gpu.node.settings
    gpu.id, gpu.redis = "box/0", client
    gpu.state, gpu.device, gpu.error, gpu.native_size, gpu.task, gpu.gen, gpu._loras = (
        "ready", "cpu", None, 64, None, None, [])
    gpu.beat()
    assert client.hget(ca.WORKERS, "box/0") and stopped == []
    client.hdel(ca.WORKERS, "box/0")
    client.set(ca.name_key("box"), "second")  # another node claimed it while this one was cut off
    gpu.beat()
    gpu.beat()
    assert stopped == [(node_gpu.os.getppid(), node_gpu.signal.SIGTERM)], "stopped once"
    assert gpu.node.name_lost.value == 1, "the main process would not know to start the node again"
    assert client.hget(ca.WORKERS, "box/0") is None, "it beat under the other node's name"
