"""What the Products page says of where a training found the product in its photos."""

import pytest

from frontend.trainings import found_words, training_view

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
