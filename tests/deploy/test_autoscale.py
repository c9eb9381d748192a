"""backend.ops.autoscale.decide on its own: nodes, /health and a clock in; actions and their reasons out."""

import pytest

from backend.ops.autoscale import Health, Node, Policy, decide, label, summary

NOW = 1_700_000_000.0
POLICY = Policy(min_nodes=0, max_nodes=3, idle_minutes=10)


def node(instance_id: int, name: str, intended="running", actual="running", idle_since=None, price=0.35) -> Node:
    return Node(instance_id, name, intended, actual, 1, price, idle_since)


def health(pending=0, **states) -> Health:
    return Health(tuple({"id": worker.replace("_", "/"), "state": state} for worker, state in states.items()), pending)


def said(actions) -> list[str]:
    return [str(a) for a in actions]


def verbs(actions) -> list[tuple[str, str | None]]:
    return [(a.verb, a.name) for a in actions if a.verb != "hold"]


def test_work_waits_and_no_gpu_free_starts_a_stopped_node():
    nodes = [node(1, "n1"), node(2, "n2", "stopped", "stopped")]
    actions = decide(nodes, health(2, n1_0="busy"), NOW, POLICY)
    assert said(actions) == ["2 images wait and no GPU is free: starting node n2 (stopped)"]
    assert actions[0].node.id == 2


def test_the_cheapest_stopped_node_is_started_first():
    nodes = [node(1, "n1", "stopped", "stopped", price=0.9), node(2, "n2", "stopped", "stopped", price=0.4)]
    assert verbs(decide(nodes, health(1), NOW, POLICY)) == [("start", "n2")]


def test_none_stopped_and_under_max_rents_a_new_node_with_a_free_name():
    nodes = [node(1, "node-1"), node(3, "node-3")]
    actions = decide(nodes, health(1, **{"node-1_0": "busy", "node-3_0": "busy"}), NOW, POLICY)
    assert said(actions) == ["1 image waits and no GPU is free and none of ours is stopped: renting a new node node-2"]


def test_at_max_nothing_starts_and_it_says_so():
    nodes = [node(1, "n1"), node(2, "n2"), node(3, "n3", "stopped", "stopped")]
    actions = decide(nodes, health(5, n1_0="busy", n2_0="busy"), NOW, Policy(0, 2, 10))
    assert said(actions) == ["5 images wait and no GPU is free, but 2 nodes of ours run and --max is 2: starting none"]


def test_a_free_gpu_anywhere_takes_the_work():
    # box/0 is not ours (a node started by hand): it is free, so nothing is started
    actions = decide([node(2, "n2", "stopped", "stopped")], health(2, box_0="ready"), NOW, POLICY)
    assert verbs(actions) == []
    assert said(actions) == ["2 images wait and 1 GPU is free (box/0): nothing to start"]


@pytest.mark.parametrize("actual, workers", [
    ("loading", {}),                        # the image is downloading
    (None, {}),                             # vast has not placed it yet
    ("stopped", {}),                        # asked to start, not scheduled yet
    ("running", {}),                        # running, not reported to the backend yet
    ("running", {"n1_0": "starting"}),      # loading its model
])
def test_a_starting_node_is_not_free_and_is_waited_for(actual, workers):
    nodes = [node(1, "n1", "running", actual), node(2, "n2", "stopped", "stopped")]
    actions = decide(nodes, health(3, **workers), NOW, POLICY)
    assert verbs(actions) == []
    assert said(actions) == ["3 images wait and no GPU is free; node n1 is starting (asked to run, not taking work "
                             "yet): waiting for it rather than starting another"]


def test_a_starting_node_is_never_stopped_and_its_idle_clock_is_reset():
    nodes = [node(1, "n1", "running", "running", idle_since=NOW - 3600)]
    actions = decide(nodes, health(0, n1_0="starting"), NOW, POLICY)
    assert verbs(actions) == [("clear", "n1")]
    assert said(actions) == ["node n1 is starting again: node n1's idle clock is reset"]


def test_a_stopping_node_is_not_stopped_again():
    nodes = [node(1, "n1", "stopped", "running", idle_since=NOW - 3600)]
    assert decide(nodes, health(0, n1_0="ready"), NOW, POLICY) == []


def test_an_idle_node_gets_its_clock_then_is_stopped_after_idle_minutes():
    nodes = [node(1, "n1")]
    first = decide(nodes, health(0, n1_0="ready"), NOW, POLICY)
    assert said(first) == ["node n1 is idle (all 1 GPU ready and nothing waits): node n1's idle clock starts now"]
    marked = [node(1, "n1", idle_since=NOW)]
    assert said(decide(marked, health(0, n1_0="ready"), NOW + 9 * 60, POLICY)) == [
        "node n1 has done no work for 9 of 10 minutes (all 1 GPU ready and nothing waits)"]
    due = decide(marked, health(0, n1_0="ready"), NOW + 10 * 60, POLICY)
    assert verbs(due) == [("stop", "n1")]
    assert said(due) == ["node n1 has done no work for 10 of 10 minutes (all 1 GPU ready and nothing waits): "
                         "stopping node n1 (it keeps its disk and model cache, and costs only storage)"]


def test_idle_stops_never_go_under_min_and_the_longest_idle_goes_first():
    nodes = [node(1, "n1", idle_since=NOW - 900), node(2, "n2", idle_since=NOW - 1800), node(3, "n3")]
    actions = decide(nodes, health(0, n1_0="ready", n2_0="ready", n3_0="busy"), NOW, Policy(2, 3, 10))
    assert verbs(actions) == [("stop", "n2")]
    assert said(actions)[-1] == ("node n1 has done no work for 15 of 10 minutes (all 1 GPU ready and nothing "
                                 "waits), but --min is 2: keeping it running")


def test_a_busy_gpu_or_waiting_work_keeps_a_node_from_idling():
    two_gpus = [Node(1, "n1", "running", "running", 2, 0.7, NOW - 3600)]
    assert verbs(decide(two_gpus, health(0, n1_0="ready", n1_1="busy"), NOW, POLICY)) == [("clear", "n1")]
    # work waits for a free GPU elsewhere... none here is free, but this ready one will take it
    assert verbs(decide([node(1, "n1", idle_since=NOW - 3600)], health(1, n1_0="ready"), NOW, POLICY)) == [
        ("clear", "n1")]


def test_a_node_whose_workers_are_dead_is_stopped_after_idle_minutes():
    nodes = [node(1, "n1", idle_since=NOW - 601), node(2, "n2")]
    actions = decide(nodes, health(0, n1_0="dead", n2_0="busy"), NOW, POLICY)
    assert verbs(actions) == [("stop", "n1")]
    assert "its workers are dead (n1/0)" in said(actions)[0]


def test_under_min_a_node_is_started_even_without_work():
    nodes = [node(2, "n2", "stopped", "stopped")]
    assert said(decide(nodes, health(0), NOW, Policy(1, 2, 10))) == [
        "0 nodes of ours run and --min is 1: starting node n2 (stopped)"]


def test_zero_idle_minutes_stops_at_once():
    actions = decide([node(1, "n1")], health(0, n1_0="ready"), NOW, Policy(0, 1, 0))
    assert verbs(actions) == [("stop", "n1")]


def test_labels_round_trip_and_other_instances_are_not_ours():
    assert label("n1") == "showroom-node:n1" and label("n1", NOW + 0.7) == "showroom-node:n1 idle-since=1700000000"
    ours = Node.from_instance({"id": 7, "label": label("n1", NOW), "intended_status": "running",
                               "actual_status": "running", "num_gpus": 2, "dph_total": 0.8})
    assert ours == Node(7, "n1", "running", "running", 2, 0.8, NOW)
    assert Node.from_instance({"id": 8, "label": "my training job"}) is None
    assert Node.from_instance({"id": 9, "label": None}) is None
    assert Node.from_instance({"id": 10, "label": "showroom-node:n2 idle-since=soon"}).idle_since is None


def test_health_must_look_like_showrooms():
    assert Health.from_json({"workers": [{"id": "n1/0", "state": "ready"}], "queue": {"pending": 2}}).pending == 2
    with pytest.raises(ValueError, match="queue.pending"):
        Health.from_json({"status": "ok"})


@pytest.mark.parametrize("low, high, idle", [(2, 1, 10), (0, 0, 10), (-1, 1, 10), (0, 1, -5)])
def test_policy_refuses_bounds_that_make_no_sense(low, high, idle):
    with pytest.raises(ValueError):
        Policy(low, high, idle)


def test_summary_names_the_queue_the_free_gpus_and_our_nodes():
    nodes = [node(1, "n1"), node(2, "n2", "stopped", "stopped")]
    assert summary(nodes, health(2, n1_0="busy", box_0="ready")) == (
        "queue: 2 images waiting; GPUs free: 1 of 2; our nodes: n1 up, n2 stopped")
