"""The Create page's form under AppTest: the style gallery (plain descriptions, a few cards at a time, no
scroll box), choosing a style over the user's own words (undo), and what Generate asks the browser to do."""

import html
import re

from frontend import nav
from frontend.views import styles
from frontend.views.style_notes import describe
from tests.frontend.conftest import SMALL, assert_no_exception, frontend_env, page_text

OWN_WORDS = "my grandmother's <product> on a kitchen shelf"


def generate_templates(backend) -> list[dict]:
    """The styles the gallery shows in its first mode (a scene without a photo), in its order."""
    templates = backend.get("/v1/catalog").json()["templates"]
    return [t for t in templates if "generate" in (t.get("modes") or ["generate"])]


def cards(at) -> list[str]:
    return [str(m.value) for m in at.markdown if "sr-card-head" in str(m.value)]


def form(at) -> dict:
    return {key: at.session_state[key] for key in ("template_id", "prompt", "negative", "steps", "guidance")}


def undo_offered(at) -> bool:
    return any(b.key == "style-undo-yes" for b in at.button)


def test_style_cards_say_what_the_style_looks_like_a_few_at_a_time(backend, open_app):
    templates = generate_templates(backend)
    at = open_app(frontend_env(backend))
    assert_no_exception(at)
    first = cards(at)
    assert len(first) == styles.FIRST, "a few cards, then a button: the gallery is no scroll box of its own"
    for card, template in zip(first, templates, strict=False):
        assert html.escape(describe(template)) in card and html.escape(template["name"]) in card
        assert "product&gt;" not in card and "lens" not in card, "no raw prompt text on a card"
    more = at.button(key="styles-more")
    assert more.label == f"Show {len(templates) - styles.FIRST} more styles"
    more.click().run()
    assert len(cards(at)) == len(templates)
    assert at.button(key="styles-more").label == "Show fewer styles"

    at.pills(key="style_category").set_value("art").run()
    art = [t for t in templates if t["category"] == "art"]
    assert len(cards(at)) == styles.FIRST and len(art) > styles.FIRST + 1, "each category opens on its own"
    assert all("Turned into" in card for card in cards(at))
    at.radio(key="mode").set_value("restyle").run()
    assert cards(at) and all("Your photo turned into" in card for card in cards(at)), \
        "an art style on a photo says it is the owner's photo that is turned into art"


def test_a_style_over_the_users_own_words_can_be_undone(backend, open_app):
    template = generate_templates(backend)[0]
    at = open_app(frontend_env(backend))
    at.text_area(key="prompt").input(OWN_WORDS)
    at.number_input(key="steps").set_value(12)
    at.button(key=f"tpl-{template['id']}").click().run()
    assert_no_exception(at)
    assert form(at)["prompt"] == template["prompt"] and form(at)["steps"] == template["steps"]
    assert undo_offered(at) and "It replaced the prompt and settings you had." in page_text(at)

    at.button(key="style-undo-yes").click().run()
    assert_no_exception(at)
    assert form(at) == {"template_id": None, "prompt": OWN_WORDS, "negative": "", "steps": 12, "guidance": 7.5}
    assert at.text_area(key="prompt").value == OWN_WORDS and at.number_input(key="steps").value == 12
    assert not undo_offered(at)


def test_a_style_over_a_blank_form_or_another_style_asks_nothing(backend, open_app):
    first, second = generate_templates(backend)[:2]
    at = open_app(frontend_env(backend))
    at.button(key=f"tpl-{first['id']}").click().run()
    assert form(at)["prompt"] == first["prompt"] and not undo_offered(at), "nothing of the user's was replaced"
    at.button(key=f"tpl-{second['id']}").click().run()
    assert form(at)["prompt"] == second["prompt"] and not undo_offered(at), "one style's words for another's"

    at.text_area(key="prompt").input(second["prompt"] + ", at dusk")
    at.button(key=f"tpl-{first['id']}").click().run()
    assert undo_offered(at), "an edited style prompt is the user's own"
    at.button(key="style-undo-no").click().run()
    assert not undo_offered(at) and form(at)["prompt"] == first["prompt"], "Keep: the style stays, the offer goes"

    at.text_area(key="prompt").input(OWN_WORDS)
    at.button(key=f"tpl-{second['id']}").click().run()
    at.text_area(key="prompt").input(second["prompt"] + " and a lemon").run()
    assert not undo_offered(at), "words typed after the style: undoing would lose them, so it is not offered"


def scroll_scripts(at) -> list[str]:
    return [str(h.value) for h in at.get("html") if "scrollIntoView" in str(h.value)]


def test_generate_brings_the_job_status_into_view_once(backend, open_app):
    at = open_app(frontend_env(backend))
    at.text_area(key="prompt").input("a teapot on a table")
    at.number_input(key="steps").set_value(2)
    at.slider(key="num_images").set_value(1)
    assert not scroll_scripts(at)
    at.button(key="generate").click().run()
    assert_no_exception(at)
    job_id = at.query_params.get("job")
    assert job_id, page_text(at)
    (script,) = scroll_scripts(at)
    assert ".st-key-job-status" in script
    at.run()
    assert not scroll_scripts(at), "only right after Generate: later runs leave the page where the user put it"


def test_every_page_has_a_link_for_phones(backend, open_app):
    """Drawn on every page and shown by CSS on narrow screens only (the browser test looks at it on a phone)."""
    at = open_app(frontend_env(backend))
    paths = [link.proto.page for link in at.get("page_link")]
    assert paths[:len(nav.PAGES)] == [page.url_path for page in nav.PAGES.values()], paths
    assert {"", "history", "products"} <= set(paths)


def test_the_job_cost_shows_before_generate_and_warns_past_the_usual_limit(backend, open_app):
    at = open_app(frontend_env(backend))
    assert_no_exception(at)
    for key, value in (("width", 512), ("height", 512), ("steps", 30)):
        at.number_input(key=key).set_value(value)
    at.slider(key="num_images").set_value(4).run()
    line = next(str(m.value) for m in at.markdown if 'id="job-cost"' in str(m.value))
    assert "4 pictures of 512 x 512 at 30 steps: 4 standard pictures of work" in line
    assert not at.warning
    at.number_input(key="width").set_value(1024)
    at.number_input(key="height").set_value(1024)
    at.slider(key="num_images").set_value(16).run()
    line = next(str(m.value) for m in at.markdown if 'id="job-cost"' in str(m.value))
    assert "16 pictures of 1024 x 1024 at 30 steps: 64 standard pictures of work" in line
    assert not at.warning, "16 SDXL-sized pictures are one ordinary job"
    at.number_input(key="width").set_value(2048)
    at.number_input(key="height").set_value(2048).run()
    line = next(str(m.value) for m in at.markdown if 'id="job-cost"' in str(m.value))
    assert "16 pictures of 2048 x 2048 at 30 steps: 256 standard pictures of work" in line
    assert any("more than the generator usually takes" in w.value for w in at.warning)


def test_a_style_with_a_sample_picture_shows_it_on_its_card(backend, open_app, tmp_path, monkeypatch):
    from PIL import Image

    first = generate_templates(backend)[0]
    Image.new("RGB", (48, 48), (10, 200, 30)).save(tmp_path / f"{first['id']}.jpg")
    at = open_app(frontend_env(backend))
    shown = sum(len(image.value) for image in at.image)
    monkeypatch.setattr(styles, "SAMPLES", tmp_path)
    at.run()
    assert_no_exception(at)
    assert sum(len(image.value) for image in at.image) == shown + 1, "one card has a sample; the others only words"


def test_a_second_click_on_the_chosen_shape_or_category_keeps_it(backend, open_app):
    """Clicking the lit Shape chip again cleared it: the same 64 x 64 then read "a custom size, set in Advanced
    settings"; the lit category chip went dark with every style still shown. Both keep their choice now (the
    browser ignores a click on the chosen chip of a required group), and a typed size is still a custom one."""
    at = open_app(frontend_env(backend))
    assert at.pills(key="aspect").proto.required and at.pills(key="style_category").proto.required
    assert at.pills(key="aspect").value == "1:1" and not any("custom size" in c.value for c in at.caption)
    at.number_input(key="width").set_value(96).run()
    assert_no_exception(at)
    assert at.pills(key="aspect").value is None, "a typed width: no preset describes the shape"
    assert any(c.value.startswith("96 × 64 px · a custom size") for c in at.caption), [c.value for c in at.caption]
    at.pills(key="aspect").set_value("16:9").run()
    assert not any("custom size" in c.value for c in at.caption)


def test_a_glossy_floor_style_sets_the_floor_reflection_and_a_matte_one_clears_it(backend, open_app):
    """Choosing the marble countertop in place mode turns its reflection on (the template's 0.25), a beach turns
    it off again: the slider follows the style as steps and guidance do, and the job sends it."""
    at = open_app(frontend_env(backend))
    at.radio(key="mode").set_value("place").run()
    at.button(key="styles-more").click().run()
    at.button(key="tpl-marble-countertop").click().run()
    assert_no_exception(at)
    assert at.session_state["reflection"] == 0.25
    at.button(key="tpl-beach-sunset").click().run()
    assert at.session_state["reflection"] == 0.0


def test_once_jobs_have_finished_the_page_says_how_long_a_job_takes_and_what_it_costs(backend, open_app):
    """Measured on this generator's own finished jobs (frontend/speed.py): the time before Generate, and a
    finished job's GPU time, priced with GPU_HOUR_PRICE."""
    jobs = [backend.submit({"prompt": f"a speed test {i}", "num_images": 2, "seed": i} | SMALL) for i in range(2)]
    for ticket in jobs:
        assert backend.wait_job(ticket["id"])["status"] == "succeeded"
    at = open_app(frontend_env(backend, GPU_HOUR_PRICE="0.5"), job=jobs[-1]["id"])
    assert_no_exception(at)
    line = next(str(m.value) for m in at.markdown if 'id="job-cost"' in str(m.value))
    assert re.search(r"of work · (under a second|about \d+ (s|min)) once it starts, "
                     r"(\$[0-9.]+|under \$0\.0001)<", line), line
    meta = next(str(m.value) for m in at.markdown if 'id="job-meta"' in str(m.value))
    assert re.search(r"2 of 2 ready · took \d+ s · (\d+ s|under 1 s) of generator time, (\$|under \$)", meta), meta

    at = open_app(frontend_env(backend), job=jobs[-1]["id"])  # no price set: the time alone
    line = next(str(m.value) for m in at.markdown if 'id="job-cost"' in str(m.value))
    assert "once it starts<" in line and "$" not in line
    assert "$" not in next(str(m.value) for m in at.markdown if 'id="job-meta"' in str(m.value))


def test_a_setting_out_of_its_range_holds_generate_back_and_says_so(backend, open_app):
    """With a range on the field, a typed 1000 steps stayed in the browser and Generate made 30-step pictures."""
    at = open_app(frontend_env(backend))
    at.text_area(key="prompt").input("a mug on a table").run()
    assert not at.button(key="generate").disabled
    at.number_input(key="steps").set_value(1000)
    at.button(key="generate").click().run()  # the click that ended the typing comes in the same run
    assert_no_exception(at)
    said = "Steps goes from 1 to 150, and it is 1000: change it in Advanced settings."
    assert not at.query_params.get("job") and said in [e.value for e in at.error]
    at.run()
    assert [e.value for e in at.error] == [said]
    assert at.button(key="generate").disabled and at.button(key="generate").help == said
    assert not [m for m in at.markdown if 'id="job-cost"' in str(m.value)], "no cost for a job that cannot be sent"

    at.number_input(key="steps").set_value(2)
    at.number_input(key="width").set_value(100).run()
    assert [e.value for e in at.error] == ["Width must be a multiple of 8, and it is 100: 96 or 104 would do "
                                           "(Advanced settings)."]
    at.number_input(key="width").set_value(4096).run()
    assert [e.value for e in at.error] == ["Width goes from 64 to 2048, and it is 4096: change it in Advanced "
                                           "settings."]
    at.number_input(key="width").set_value(64)
    at.number_input(key="height").set_value(64)
    at.number_input(key="guidance").set_value(31.5).run()
    assert [e.value for e in at.error] == ["Follow the prompt goes from 0 to 30, and it is 31.5: change it in "
                                           "Advanced settings."]
    at.number_input(key="guidance").set_value(7.5)
    at.slider(key="num_images").set_value(1).run()
    assert not at.error and not at.button(key="generate").disabled
    at.button(key="generate").click().run()
    job_id = at.query_params.get("job")
    assert job_id, page_text(at)
    spec = backend.get(f"/v1/jobs/{job_id}").json()["spec"]
    assert (spec["steps"], spec["width"], spec["height"], spec["guidance_scale"]) == (2, 64, 64, 7.5)
