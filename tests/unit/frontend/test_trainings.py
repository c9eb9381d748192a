"""What the Products page says of where a training found the product in its photos."""

import pytest

from frontend.trainings import found_words, measured_minutes, training_view

BASE = {"id": "t", "product": "mug", "status": "succeeded", "progress": {"step": 10, "steps": 10}}


def test_the_owner_is_told_where_the_product_was_found_and_advised_when_mostly_not():
    assert found_words((4, 4)) == ("It found your product in 4 of the 4 photos: there it learnt the product, not what "
                                   "is around it.")
    assert "plain background" in found_words((1, 4)) and "plain background" not in found_words((2, 4))
    assert found_words(None) is None and found_words((0, 0)) is None


@pytest.mark.parametrize("value, expected", [([3, 4], (3, 4)), (None, None), ([5, 4], None), (["3", 4], None),
                                             ([3], None), ({"a": 1}, None), ([-1, 4], None)])
def test_a_manifests_counts_are_read_or_left_out(value, expected):
    assert training_view(BASE | {"product_found": value}).product_found == expected


@pytest.mark.parametrize("field", ["check_job", "earlier_check_job"])
def test_a_manifests_test_pictures_are_read_when_they_name_a_job(field):
    job = "0123456789abcdef" * 2
    assert getattr(training_view(BASE | {field: job}), field) == job
    assert getattr(training_view(BASE | {field: "../products/x"}), field) is None


def _learnt(created: str, step_s, device="cuda", resolution=512, status="succeeded"):
    return training_view(BASE | {"created_at": created, "step_s": step_s, "device": device,
                                 "resolution": resolution, "status": status})


def test_the_teaching_time_is_the_newest_speed_measured_on_this_kind_of_device_and_size():
    older, newer = _learnt("2026-11-01T10:00:00Z", 1.2), _learnt("2026-11-20T10:00:00Z", 0.6)
    assert measured_minutes(800, [older, newer], ("cuda:0", "cuda:1"), 512) == 8, "800 x 0.6 s, the newest"
    assert measured_minutes(800, [older, newer], ("cpu",), 512) is None, "a box without a GPU now"
    assert measured_minutes(800, [older, newer], ("cuda:0",), 1024) is None, "another model's size"
    assert measured_minutes(800, [_learnt("2026-11-21T10:00:00Z", 0.6, status="failed")], ("cuda:0",), 512) is None
    assert measured_minutes(10, [newer], ("cuda:0",), 512) == 1, "at least a minute"


@pytest.mark.parametrize("field, value", [("step_s", -1), ("step_s", True), ("step_s", "1"), ("device", "tpu"),
                                          ("resolution", "512")])
def test_a_manifests_speed_is_read_only_when_it_makes_sense(field, value):
    view = training_view(BASE | {"step_s": 0.5, "device": "cuda", "resolution": 512} | {field: value})
    assert getattr(view, field) is None
