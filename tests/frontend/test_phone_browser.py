"""A shop owner on a phone (390 x 844) in a real browser: a job's link shows its pictures before the form,
each picture's buttons keep their words, Use these settings brings the form on screen, and a product's link
shows the product before the list (its cut-out and each listed product's picture small, beside their words),
its cut-out beside where it goes (job-link-phone.png, use-settings-phone.png, place-phone.png), the picker with
the product's picture beside it; a desktop keeps the form left of the pictures, the buttons of two style cards
side by side on one line (and of History's cards, a portrait job's beside a square one's), and room under
the header's status line."""

import uuid

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import expect, sync_playwright

from tests.factories import make_lora, packshot
from tests.frontend.conftest import SMALL
from tests.frontend.test_browser import CHROMIUM, CHROMIUM_ARGS, app_url, in_viewport, wait_images  # noqa: F401

PHONE = {"width": 390, "height": 844}
# Streamlit cuts a button's label that does not fit with an ellipsis: its text box is then wider inside than out.
CUT_LABELS = """(selector) => [...document.querySelectorAll(selector)]
    .filter(b => [...b.querySelectorAll('*')].some(e => e.scrollWidth > e.clientWidth + 1))
    .map(b => b.innerText.trim())"""
IN_UPPER_THIRD = """(selector) => {
    const el = document.querySelector(selector);
    const top = el && el.getBoundingClientRect().top;
    return el !== null && top >= 0 && top <= window.innerHeight / 3;
}"""

# Each style card: its top, its button's top, and the room between its words and the button.
STYLE_CARDS = """() => [...document.querySelectorAll('[class*="st-key-style-card-"]')].map(card => {
    const words = card.querySelector('.sr-desc').getBoundingClientRect();
    const button = card.querySelector('button').getBoundingClientRect();
    return {top: card.getBoundingClientRect().top, button: button.top, room: button.top - words.bottom};
})"""

# History cards whose when / pictures / product line is under two lines tall (a row's buttons then sat unlevel).
SHORT_JOB_METAS = """() => [...document.querySelectorAll('.sr-job-meta')]
    .filter(m => m.getBoundingClientRect().height < 2 * parseFloat(getComputedStyle(m).lineHeight) - 1)
    .map(m => m.innerText)"""


def box(page, selector: str) -> dict:
    return page.evaluate("(s) => document.querySelector(s).getBoundingClientRect().toJSON()", selector)


def columns(page, container: str) -> list[dict]:
    """The boxes of a container's columns, measured at one moment (the page may be scrolling)."""
    return page.evaluate("""(s) => [...document.querySelectorAll(s + ' [data-testid=stColumn]')]
        .map(c => c.getBoundingClientRect().toJSON())""", container)


@pytest.mark.browser
def test_on_a_phone_a_job_link_shows_the_pictures_before_the_form(backend, app_url, artifacts,  # noqa: F811
                                                                   tiny_model):
    job = backend.wait_job(backend.submit({"prompt": "a teapot on a table", "num_images": 4, **SMALL})["id"])
    tall = backend.wait_job(backend.submit({"prompt": "a vase", "num_images": 1, **SMALL, "height": 96})["id"])
    name = f"jar-{uuid.uuid4().hex[:6]}"
    added = backend.post("/v1/products", data={"name": name, "trigger": "qzv jar"},
                         files={"photo": ("jar.png", packshot(), "image/png")})
    assert added.status_code == 201, added.text
    learnt = f"urn-{uuid.uuid4().hex[:6]}"
    added = backend.post("/v1/products", data={"name": learnt, "trigger": "qzv urn"},
                         files={"photo": ("urn.png", packshot(), "image/png"),
                                "file": ("urn.safetensors", make_lora(tiny_model, seed=3), "application/octet-stream")})
    assert added.status_code == 201, added.text
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        phone = browser.new_page(viewport=PHONE, device_scale_factor=2)
        phone.goto(f"{app_url}/?job={job['id']}")
        wait_images(phone, 4)
        phone.wait_for_timeout(500)
        for selector in (".st-key-job-status", ".st-key-result-0", ".st-key-result-1"):
            assert in_viewport(phone, selector), f"{selector} is not on the first screen of the link"
        assert box(phone, ".st-key-compose-form")["top"] >= box(phone, ".st-key-results-grid")["bottom"], \
            "the form comes after the pictures"
        assert phone.evaluate(CUT_LABELS, ".st-key-results-grid button") == [], "Download and Upscale 4x in full"
        gap = box(phone, ".st-key-job-actions")["top"] - box(phone, ".sr-job-prompt")["bottom"]
        assert gap >= 8, f"the job's buttons {gap:.0f} px under its prompt (its last line sat on their border)"
        phone.screenshot(path=str(artifacts / "job-link-phone.png"))

        phone.locator(".st-key-job-reuse button:visible").click()
        phone.wait_for_function(IN_UPPER_THIRD, arg=".st-key-compose-form", timeout=15_000)
        expect(phone.get_by_text("The form holds the settings of the job you opened")).to_be_visible()
        phone.wait_for_timeout(500)
        phone.screenshot(path=str(artifacts / "use-settings-phone.png"))

        phone.goto(f"{app_url}/products?product={name}")
        expect(phone.locator(".st-key-product-open").get_by_text(name).first).to_be_visible(timeout=30_000)
        # Make pictures comes five elements after the name, and the cut-out above it moves it down once loaded
        expect(phone.locator(".st-key-make-pictures button")).to_be_visible(timeout=15_000)
        phone.wait_for_function("() => [...document.querySelectorAll('.st-key-product-summary img')]"
                                ".some(i => i.complete && i.naturalWidth > 0)", timeout=15_000)
        phone.wait_for_timeout(300)
        assert phone.evaluate(IN_UPPER_THIRD, ".st-key-product-open"), "the product, not the list, comes first"
        cutout, summary = columns(phone, ".st-key-product-summary")
        assert summary["left"] >= cutout["right"] - 1 and cutout["width"] < PHONE["width"] / 2, \
            "the open product's cut-out beside what it can do, not a screen-wide picture"
        assert in_viewport(phone, ".st-key-make-pictures"), "Make pictures with it on the product's first screen"
        picture, words = columns(phone, f".st-key-listed-{name}")
        assert abs(picture["top"] - words["top"]) < 2 and picture["width"] < 150, \
            "a listed product's picture beside its name, not a screen-wide picture per product"
        phone.locator(".st-key-make-pictures button").click()
        expect(phone.get_by_text("Where it goes · 64 × 64")).to_be_visible(timeout=30_000)
        picker, picture = columns(phone, ".st-key-product-pick")
        assert picture["left"] >= picker["right"] - 1 and picture["top"] < picker["bottom"], \
            "the product's picture beside the picker, not under it"
        cut, canvas = columns(phone, ".st-key-pair-cutout")
        assert abs(cut["top"] - canvas["top"]) < 2 and canvas["left"] >= cut["right"] - 1, \
            "the cut-out beside where it goes, so Position's effect stays in sight"
        # Measured, not scrolled to: the click's own scroll to the form may still be running on a slow box. The chips
        # come after the caption waited for, and the two pictures above them grow once loaded.
        expect(phone.locator(".st-key-place_at")).to_be_visible(timeout=15_000)
        phone.wait_for_function("() => [...document.querySelectorAll('.st-key-pair-cutout img')].filter(i => "
                                "i.complete && i.naturalWidth > 0).length === 2", timeout=15_000)
        preview, chips = box(phone, ".st-key-pair-cutout"), box(phone, ".st-key-place_at")
        span = max(preview["bottom"], chips["bottom"]) - min(preview["top"], chips["top"])
        assert span <= PHONE["height"] - 40, f"the preview and its Position chips on one screen ({span:.0f} px)"
        phone.locator(".st-key-place_at").scroll_into_view_if_needed()  # for the screenshot
        phone.wait_for_timeout(300)
        phone.screenshot(path=str(artifacts / "place-phone.png"))

        phone.goto(f"{app_url}/products?product={learnt}&check={job['id']}")  # four pictures as its test pictures
        phone.wait_for_function("() => [...document.querySelectorAll('.st-key-check-compare img')].filter(i => "
                                "i.complete && i.naturalWidth > 0).length === 5", timeout=30_000)  # its cut-out too
        try:  # given a moment: a slow box has measured the page between the pictures' arrival and its styling
            phone.wait_for_function("() => document.querySelector('.st-key-check-compare [data-testid=stColumn]')"
                                    ".getBoundingClientRect().height === 0", timeout=5_000)
        except PlaywrightTimeout:
            pass
        mine, _ = columns(phone, ".st-key-check-compare")[:2]  # then the pictures' own columns
        assert mine["height"] == 0, "not a second, screen-wide cut-out: the product's own is just above"
        span = box(phone, ".st-key-pair-check-2")["bottom"] - box(phone, ".st-key-check")["top"]
        assert span <= PHONE["height"] - 40, f"the button and the four pictures on one screen ({span:.0f} px)"
        phone.locator(".st-key-pair-check-2").scroll_into_view_if_needed()  # for the screenshot
        left, right = columns(phone, ".st-key-pair-check-0")
        assert abs(left["top"] - right["top"]) < 2 and left["width"] > PHONE["width"] / 3, "two a row, each a fair size"
        phone.screenshot(path=str(artifacts / "check-phone.png"), full_page=True)

        desktop = browser.new_page(viewport={"width": 1440, "height": 1000})
        desktop.goto(f"{app_url}/?job={job['id']}")
        wait_images(desktop, 4)
        form, pictures = box(desktop, ".st-key-compose-form"), box(desktop, ".st-key-job-first")
        assert form["right"] <= pictures["left"] and abs(form["top"] - pictures["top"]) < 40, (form, pictures)
        cards = desktop.evaluate(STYLE_CARDS)
        pairs = [(a, b) for a, b in zip(cards, cards[1:]) if abs(a["top"] - b["top"]) < 2]
        assert pairs and all(abs(a["button"] - b["button"]) < 2 for a, b in pairs), \
            f"two style cards side by side have their buttons on one line: {cards}"
        assert min(card["room"] for card in cards) >= 8, f"a style card's words sat on its button: {cards}"
        desktop.goto(f"{app_url}/products?product={name}")
        expect(desktop.locator(".st-key-add-another button")).to_be_visible(timeout=30_000)
        gap = box(desktop, ".st-key-add-another button")["top"] - box(desktop, ".sr-status-meta")["bottom"]
        assert gap >= 8, f"Add another product {gap:.0f} px under the header's status line (it touched it)"
        desktop.goto(f"{app_url}/history")
        expect(desktop.locator(f".st-key-job-{job['id']} .sr-job-meta")).to_be_visible(timeout=30_000)
        try:  # the page's style may land a moment after the cards on a loaded box: measured once it has
            desktop.wait_for_function(f"() => ({SHORT_JOB_METAS})().length === 0", timeout=15_000)
        except PlaywrightTimeout:
            pass
        short = desktop.evaluate(SHORT_JOB_METAS)
        assert short == [], f"a History card's line under its prompt keeps two lines' room (its buttons level): {short}"
        covers = ", ".join(f".st-key-job-{j['id']} img" for j in (job, tall))
        desktop.wait_for_function("(s) => [...document.querySelectorAll(s)].filter(i => i.complete && "
                                  "i.naturalWidth > 0).length === 2", arg=covers, timeout=15_000)
        square, portrait = (box(desktop, f".st-key-job-{j['id']}") for j in (job, tall))
        assert abs(square["top"] - portrait["top"]) < 2, "the two newest jobs share History's first row"
        opens = ", ".join(f".st-key-open-{j['id']} button" for j in (job, tall))
        desktop.wait_for_function("(s) => document.querySelectorAll(s).length >= 2", arg=opens,
                                  timeout=15_000)  # a card's buttons are drawn after its cover, a moment later
        opens = [box(desktop, f".st-key-open-{j['id']} button") for j in (job, tall)]
        assert abs(opens[0]["top"] - opens[1]["top"]) < 2, \
            f"a 64 x 96 job's cover as tall as a square one's, so the row's buttons stay level: {opens}"
        browser.close()
