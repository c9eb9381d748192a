"""Which tasks the backend takes for lost (their node's heartbeats stopped), and the copy it sends."""

import json
from types import SimpleNamespace

from backend.gpu import celery_app as ca
from backend.gpu import celery_rescue as rescue

NOW = 1_000_000.0


def beat(age: float, task_id: str | None = None, name: str = ca.GENERATE) -> str:
    task = {"id": task_id, "name": name, "kwargs": {}, "queue": "q"} if task_id else None
    return json.dumps({"state": "busy" if task else "ready", "task": task, "ts": NOW - age})


def test_a_task_whose_worker_is_silent_for_lost_s_is_lost():
    beats = {"a/0": beat(rescue.LOST_S + 1, "t1"), "b/0": beat(2, "t2")}
    assert rescue.lost_tasks(beats, NOW) == [("a/0", json.loads(beats["a/0"])["task"])]


def test_a_worker_silent_for_less_than_lost_s_or_idle_loses_nothing():
    beats = {"a/0": beat(rescue.LOST_S - 1, "t1"), "b/0": beat(10 * rescue.LOST_S), "c/0": beat(3)}
    assert rescue.lost_tasks(beats, NOW) == []


def test_a_task_a_fresher_worker_runs_is_not_lost():
    """A GPU process killed alone: Celery hands its task to the successor at once, which beats afresh."""
    beats = {"a/0": beat(rescue.LOST_S + 5, "t1"), "a/1": beat(1, "t1")}
    assert rescue.lost_tasks(beats, NOW) == []


def test_unreadable_heartbeats_and_unknown_task_names_are_left_alone():
    beats = {"a/0": "not json", "b/0": json.dumps({"task": {"id": "x"}}), "c/0": beat(99, "t3", name="other.task")}
    assert rescue.lost_tasks(beats, NOW) == []


def test_a_copy_keeps_only_the_images_still_open_with_their_own_seeds_and_keys():
    payload = {"job_id": "j", "indices": [2, 3, 4], "seeds": [12, 13, 14], "keys": ["k2", "k3", "k4"],
               "preview_keys": ["p2", "p3", "p4"], "prompt": "x"}
    cut = rescue.only_indices(payload, {2, 4})
    assert cut == payload | {"indices": [2, 4], "seeds": [12, 14], "keys": ["k2", "k4"], "preview_keys": ["p2", "p4"]}
    assert payload["indices"] == [2, 3, 4], "the original is left as it was"
    assert rescue.only_indices(payload | {"preview_keys": []}, {3})["preview_keys"] == []


def test_a_heartbeat_names_the_task_by_its_broker_id_name_kwargs_and_queue():
    request = SimpleNamespace(id="abc", task=ca.TRAIN, kwargs={"target": 50}, delivery_info={"routing_key": "q1"})
    assert rescue.running(request) == {"id": "abc", "name": ca.TRAIN, "kwargs": {"target": 50}, "queue": "q1"}
    assert rescue.running(SimpleNamespace(id="x", task=ca.UPSCALE, kwargs={}, delivery_info=None))["queue"] is None
