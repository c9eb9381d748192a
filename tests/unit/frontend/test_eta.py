"""How long a running picture has left: at the speed measured between two manifests the page saw, so the first
steps' setup does not stretch the estimate; from its start when the page has seen only one."""

from datetime import UTC, datetime, timedelta

from frontend.jobs import ImageView


def at(seconds: float) -> str:
    return (datetime(2026, 12, 1, 10, 0, tzinfo=UTC) + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def running(step: int, steps: int = 30) -> ImageView:
    return ImageView(index=0, key="jobs/x/0.png", seed=1, status="running", started_at=at(0), progress=(step, steps))


def now(seconds: float) -> datetime:
    return datetime(2026, 12, 1, 10, 0, tzinfo=UTC) + timedelta(seconds=seconds)


def test_a_slow_start_does_not_stretch_the_time_left():
    # 4 s to encode the prompt and take the first step, then 0.2 s a step
    assert running(1).eta_s(now(4)) == 29 * 4, "seen once: from its start, setup included"
    left = running(11).eta_s(now(6), since=(1, at(4)), updated_at=at(6))
    assert abs(left - 19 * 0.2) < 1e-6, left


def test_the_time_since_the_last_manifest_counts_down():
    left = running(11).eta_s(now(7), since=(1, at(4)), updated_at=at(6))
    assert abs(left - (19 * 0.2 - 1)) < 1e-6 and running(29).eta_s(now(60), (1, at(4)), at(6)) == 0


def test_without_a_step_seen_since_it_falls_back_to_its_start():
    assert running(5).eta_s(now(10), since=(5, at(8)), updated_at=at(8)) == 25 * 2
    assert running(0).eta_s(now(10)) is None and ImageView(0, "k", 1, "succeeded").eta_s() is None
