"""Checks backend/products/templates.json against the contract's Template shape and JobSpec ranges.

Plain json + stdlib on purpose: the file must be valid on its own, without importing the backend.
"""

import json
import re
from pathlib import Path

import pytest

TEMPLATES_FILE = Path(__file__).resolve().parents[2] / "backend" / "products" / "templates.json"

KEYS = {"id", "name", "category", "prompt", "negative_prompt", "steps", "guidance_scale", "strength", "modes"}
OPTIONAL = {"reflection"}  # place mode's floor reflection, only where the floor is glossy
MODES = {"generate", "restyle", "place"}
CATEGORIES = {
    "cosmetics", "shoes", "eyewear", "bags", "watches", "jewellery",
    "food-drink", "electronics", "furniture", "pets", "clothing", "general", "art",
}
SLUG = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")


def _load():
    return json.loads(TEMPLATES_FILE.read_text(encoding="utf-8"))


TEMPLATES = _load()


def _ids(templates):
    return [t.get("id", f"#{i}") if isinstance(t, dict) else f"#{i}" for i, t in enumerate(templates)]


def test_is_a_list_of_at_least_16():
    assert isinstance(TEMPLATES, list)
    assert len(TEMPLATES) >= 16


def test_at_least_10_distinct_categories():
    assert len({t["category"] for t in TEMPLATES}) >= 10


def test_ids_unique():
    ids = [t["id"] for t in TEMPLATES]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)


def test_no_two_prompts_identical():
    prompts = [t["prompt"] for t in TEMPLATES]
    assert len(prompts) == len(set(prompts))


@pytest.mark.parametrize("t", TEMPLATES, ids=_ids(TEMPLATES))
def test_exact_keys(t):
    assert isinstance(t, dict)
    assert KEYS <= set(t) <= KEYS | OPTIONAL, set(t) - KEYS


@pytest.mark.parametrize("t", TEMPLATES, ids=_ids(TEMPLATES))
def test_fields(t):
    assert isinstance(t["id"], str) and SLUG.fullmatch(t["id"]), t["id"]
    assert isinstance(t["name"], str) and t["name"].strip()
    assert t["category"] in CATEGORIES
    assert isinstance(t["negative_prompt"], str)

    prompt = t["prompt"]
    assert isinstance(prompt, str)
    assert 1 <= len(prompt) <= 1000
    # an art style repaints whatever photo it is given: it names no product
    assert prompt.count("<product>") == (0 if t["category"] == "art" else 1)

    # bool is an int subclass; reject it explicitly.
    assert isinstance(t["steps"], int) and not isinstance(t["steps"], bool)
    assert 1 <= t["steps"] <= 150
    for key, hi in (("guidance_scale", 30), ("strength", 1), ("reflection", 1)):
        value = t.get(key, 0.0)
        assert isinstance(value, (int, float)) and not isinstance(value, bool), key
        assert 0 <= value <= hi, key


@pytest.mark.parametrize("t", TEMPLATES, ids=_ids(TEMPLATES))
def test_modes_name_what_the_template_suits(t):
    assert isinstance(t["modes"], list) and t["modes"] and set(t["modes"]) <= MODES, t["modes"]
    assert len(t["modes"]) == len(set(t["modes"]))


def test_only_templates_with_a_glossy_floor_reflect_the_product():
    """A floor reflection on sand, grass or velvet looks wrong: only templates whose prompt asks for a reflective,
    mirror or polished floor, and that suit place mode, give one."""
    reflecting = {t["id"] for t in TEMPLATES if t.get("reflection")}
    assert reflecting == {"marble-countertop", "eyewear-reflective-surface", "electronics-neon-tech"}
    for t in TEMPLATES:
        if t.get("reflection"):
            assert "place" in t["modes"] and any(w in t["prompt"] for w in ("reflect", "mirror", "polished")), t["id"]


def test_several_templates_suit_place_mode_and_worn_products_do_not():
    place = {t["id"] for t in TEMPLATES if "place" in t["modes"]}
    assert len(place) >= 12
    worn = {t["id"] for t in TEMPLATES if "worn by" in t["prompt"] or "worn on" in t["prompt"]}
    assert worn and not (worn & place), "a cut-out product cannot be worn by someone the scene invents"


def test_art_styles_restyle_any_photo_with_a_tuned_strength():
    art = [t for t in TEMPLATES if t["category"] == "art"]
    assert len(art) >= 8
    for t in art:
        assert "restyle" in t["modes"] and "place" not in t["modes"], t["id"]
        assert 0.35 <= t["strength"] <= 0.6 and t["negative_prompt"], t["id"]
