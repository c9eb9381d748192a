"""Resolving a JobSpec: modes, placement, and sizes that follow a photo's aspect."""

import pytest

from backend.errors import InvalidRequest
from backend.jobs.specs import resolve, size_for_aspect
from backend.models import JobSpec, Placement, Product


def product(packshot: bool = True) -> Product:
    return Product(name="bottle", trigger="sks bottle", has_lora=False,
                   packshot_key="products/bottle.png" if packshot else None)


def resolved(photo_size=(640, 480), product_=None, **spec):
    return resolve(JobSpec(prompt="<product> on sand", **spec), template=None, product=product_, native=512,
                   photo_size=photo_size)


@pytest.mark.parametrize("aspect, native, expected", [
    (1.0, 512, (512, 512)), (2.0, 512, (728, 360)), (0.5, 512, (360, 728)), (16 / 9, 1024, (1368, 768)),
    (4 / 5, 1024, (912, 1144)), (100.0, 512, (2048, 64)), (2.0, 64, (128, 64)),
])
def test_size_for_aspect_keeps_the_pixel_count_in_multiples_of_8(aspect, native, expected):
    width, height = size_for_aspect(aspect, native)
    assert (width, height) == expected
    if 64 < height and width < 2048:
        assert abs(width * height / native ** 2 - 1) < 0.03


def test_mode_defaults_follow_the_photo():
    assert resolved().mode == "restyle"
    assert resolved(photo_size=None).mode == "generate"


def test_a_photo_without_a_size_follows_its_aspect():
    spec = resolved(photo_size=(1024, 512))
    assert (spec.width, spec.height) == (728, 360)
    spec = resolved(photo_size=(1024, 512), width=512)
    assert (spec.width, spec.height) == (512, 256), "one side given: the other keeps the aspect"
    spec = resolved(photo_size=(1024, 512), width=256, height=256)
    assert (spec.width, spec.height) == (256, 256), "both given: the request decides"


def test_place_mode_gets_the_default_placement_and_keeps_a_given_one():
    assert resolved(mode="place").placement == Placement(x=0.5, y=0.55, scale=0.6)
    assert resolved(mode="place", placement={"x": 0.3, "y": 0.7, "scale": 0.4}).placement == \
        Placement(x=0.3, y=0.7, scale=0.4)
    assert resolved(mode="restyle").placement is None


def test_place_mode_with_a_packshot_needs_no_photo():
    spec = resolved(photo_size=None, product_=product(), mode="place")
    assert spec.mode == "place" and spec.prompt == "sks bottle on sand" and (spec.width, spec.height) == (512, 512)


@pytest.mark.parametrize("photo, product_, fields, message", [
    (None, None, {"mode": "place"}, "no product is named"),
    (None, product(packshot=False), {"mode": "place"}, "product 'bottle' has no packshot"),
    (None, None, {"mode": "restyle"}, "repaints a photo"),
    ((64, 64), None, {"mode": "generate"}, "uses no photo"),
    ((64, 64), None, {"mode": "restyle", "placement": {"x": 0.1}}, "only in mode 'place'"),
    ((64, 64), None, {"mode": "restyle", "steps": 1, "strength": 0.5}, "steps x strength"),
])
def test_impossible_requests_say_why(photo, product_, fields, message):
    with pytest.raises(InvalidRequest, match=message):
        resolved(photo_size=photo, product_=product_, **fields)


def test_place_mode_has_no_strength_rule():
    assert resolved(mode="place", steps=1, strength=0.1).mode == "place"


@pytest.mark.parametrize("placement", [{"x": -0.1}, {"y": 1.01}, {"scale": 0.04}, {"scale": 1.5}, {"z": 1}])
def test_placement_out_of_range_is_refused_by_the_spec(placement):
    with pytest.raises(ValueError):
        JobSpec(prompt="p", mode="place", placement=placement)


def test_a_glossy_templates_floor_reflection_applies_in_place_mode_unless_the_request_says():
    """A template of a glossy floor (marble, a mirror surface) gives place mode its reflection; the request's own
    value wins (0 turns it off); other modes have no product layer to mirror, so none."""
    from backend.products.catalog import load_templates

    marble = load_templates()["marble-countertop"]
    assert marble.reflection == 0.25

    def place(**spec):
        return resolve(JobSpec(template=marble.id, mode="place", **spec), template=marble, product=None, native=512,
                       photo_size=(640, 480))

    assert place().reflection == 0.25
    assert place(reflection=0).reflection == 0 and place(reflection=0.6).reflection == 0.6
    restyled = resolve(JobSpec(template=marble.id), template=marble, product=None, native=512, photo_size=(640, 480))
    assert restyled.mode == "restyle" and restyled.reflection == 0.0
    assert resolved(mode="place").reflection == 0.0, "no template: a matte floor"
    with pytest.raises(InvalidRequest, match="reflection is used only in mode 'place'"):
        resolved(photo_size=None, reflection=0.3)
