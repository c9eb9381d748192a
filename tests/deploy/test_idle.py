"""backend/ops/idle.py: the idle stop with a fake clock, and the real vast.ai stop request against the stand-in."""

import logging
import subprocess
import sys
import threading

import pytest

from backend.ops.idle import Activity, IdleStopper, StopFailed, vast_stop_action
from tests.deploy.vast_standin import VastStandIn
from tests.factories import REPO


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, minutes: float) -> None:
        self.now += minutes * 60


def make(idle_minutes=10, busy=lambda: False):
    clock, stops = FakeClock(), []
    activity = Activity(clock)
    stopper = IdleStopper(idle_minutes, activity.last, lambda: stops.append(clock()), clock=clock, busy=busy)
    return stopper, activity, clock, stops


def test_idle_stop_waits_for_the_full_idle_time():
    stopper, _, clock, stops = make(idle_minutes=10)
    clock.advance(9.9)
    assert stopper.check() is False
    assert stops == []
    clock.advance(0.1)
    assert stopper.check() is True
    assert stops == [clock.now]


def test_idle_stop_stops_only_once():
    stopper, _, clock, stops = make(idle_minutes=1)
    clock.advance(2)
    assert stopper.check() and stopper.check()
    clock.advance(60)
    assert stopper.check()
    assert len(stops) == 1


def test_idle_stop_activity_restarts_the_count():
    stopper, activity, clock, stops = make(idle_minutes=10)
    clock.advance(8)
    activity.touch()
    clock.advance(8)
    assert stopper.check() is False
    assert stopper.idle_for() == pytest.approx(8 * 60)
    clock.advance(2)
    assert stopper.check() is True
    assert len(stops) == 1


def test_idle_stop_running_work_counts_as_activity():
    working = {"now": True}
    stopper, _, clock, stops = make(idle_minutes=5, busy=lambda: working["now"])
    clock.advance(30)  # a long job: busy the whole time
    assert stopper.check() is False
    working["now"] = False
    clock.advance(4)
    assert stopper.check() is False
    clock.advance(1)
    assert stopper.check() is True
    assert len(stops) == 1


def test_idle_stop_waits_for_a_request_still_being_served():
    clock, stops = FakeClock(), []
    activity = Activity(clock)
    stopper = IdleStopper(5, activity.last, lambda: stops.append(clock()), clock=clock, busy=activity.serving)
    activity.begin()  # a large LoRA upload, still arriving
    clock.advance(20)
    assert stopper.check() is False
    activity.end(touch=True)
    clock.advance(4.9)
    assert stopper.check() is False
    clock.advance(0.1)
    assert stopper.check() is True and len(stops) == 1


def test_idle_stop_a_refused_request_is_not_activity_once_answered():
    clock = FakeClock()
    activity = Activity(clock)
    activity.begin()
    clock.advance(3)
    activity.end(touch=False)  # a 401 to a scanner
    assert not activity.serving() and activity.last() == 1000.0


def test_idle_stop_failed_stop_is_retried_and_logged(caplog):
    clock, calls = FakeClock(), []

    def flaky_stop():
        calls.append(clock())
        if len(calls) == 1:
            raise StopFailed("PUT https://example/instances/1/ answered 503")

    stopper = IdleStopper(1, lambda: 1000.0, flaky_stop, clock=clock)
    clock.advance(2)
    with caplog.at_level(logging.ERROR, logger="showroom.idle"):
        assert stopper.check() is False
    assert "answered 503" in caplog.text
    assert stopper.check() is True
    assert len(calls) == 2


@pytest.mark.parametrize("minutes", [0, -5])
def test_idle_stop_refuses_a_non_positive_limit(minutes):
    with pytest.raises(ValueError, match=f"got {minutes}"):
        IdleStopper(minutes, lambda: 0.0, lambda: None)


def test_idle_stop_thread_stops_the_instance_and_ends():
    stopped = threading.Event()
    stopper = IdleStopper(0.001, lambda: 0.0, stopped.set).start(interval_s=0.01)  # real clock: 60 ms idle
    assert stopped.wait(5)
    stopper.close()
    assert stopper.stopped and not stopper._thread.is_alive()


def test_idle_stop_close_ends_the_thread_without_stopping():
    """The stop runs in the stopper's thread, where an exception could not fail the test: record it instead."""
    checked, stops = threading.Event(), []

    def last_activity() -> float:
        checked.set()
        return 0.0

    stopper = IdleStopper(60, last_activity, lambda: stops.append("stopped"), clock=lambda: 0.0)
    stopper.start(interval_s=0.01)
    assert checked.wait(5)  # the thread is checking, not idle before its first check
    stopper.close()
    assert not stopper._thread.is_alive() and not stopper.stopped
    assert stops == []


def test_vast_stop_action_sends_the_manage_instance_request():
    with VastStandIn() as vast:
        vast_stop_action("31337", "scoped-key-123", api_url=vast.api)()
    assert len(vast.seen) == 1
    request = vast.seen[0]
    assert (request.method, request.path) == ("PUT", "/api/v0/instances/31337/")
    assert request.auth == "Bearer scoped-key-123"
    assert request.body == {"state": "stopped"}


@pytest.mark.parametrize("answer", [(401, {"success": False, "msg": "bad key"}), (200, {"success": False})])
def test_vast_stop_action_refused_raises_without_the_key(answer):
    with VastStandIn() as vast:
        vast.manage_answer = answer
        with pytest.raises(StopFailed) as failed:
            vast_stop_action("7", "scoped-key-123", api_url=vast.api)()
    assert "/instances/7/" in str(failed.value)
    assert "scoped-key-123" not in str(failed.value)


def test_vast_stop_action_unreachable_api_raises():
    with VastStandIn() as vast:
        dead = vast.api
    with pytest.raises(StopFailed, match="failed"):
        vast_stop_action("7", "k-123", api_url=dead, timeout_s=2)()


@pytest.mark.parametrize("instance_id, key, message", [
    (None, "k", "CONTAINER_ID"), ("", "k", "CONTAINER_ID"), ("abc", "k", "CONTAINER_ID"),
    ("12", None, "CONTAINER_API_KEY"),
])
def test_vast_stop_action_needs_vast_variables(instance_id, key, message):
    with pytest.raises(ValueError, match=message):
        vast_stop_action(instance_id, key)


def test_idle_module_does_not_import_torch():
    code = "import sys, backend.ops.idle; print(sorted(m for m in ('torch', 'diffusers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
