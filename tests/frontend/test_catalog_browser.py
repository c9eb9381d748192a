"""The Catalog page in a real browser: pick two products and two styles, see the count and the cost, send
them, watch the grid fill (catalog-picked.png, catalog-grid.png), and find the grid again from its link; on a
phone the same link shows each style's pictures two a row, every pick stays in sight, and a second run's
grid comes on screen after the click (catalog-phone.png); what the page says before a run (a product not
learnt, steps out of range: catalog-warnings.png) and after a stop (catalog-stopped.png)."""

import re
import time
import uuid

import pytest
from playwright.sync_api import expect, sync_playwright

from frontend import catalog_run
from tests.factories import packshot
from tests.frontend.test_browser import CHROMIUM, CHROMIUM_ARGS, app_url, scroll_to_top  # noqa: F401 (a fixture)
from tests.frontend.test_phone_browser import IN_UPPER_THIRD, PHONE, columns

# An element whose content is wider than its box: a multiselect whose chips run off on one scrolling line.
OVERFLOWS = """(selector) => [...document.querySelectorAll(selector + ' *')]
    .some(e => e.scrollWidth > e.clientWidth + 1)"""

GRID_IMAGES = '[class*="st-key-catalog-row-"] img:not(.sr-preview)'  # the pictures, not packshots or previews


def grid_loaded(page, count: int, timeout_s: float = 120) -> None:
    done = f"""() => {{
        const imgs = [...document.querySelectorAll('{GRID_IMAGES}')];
        return imgs.length === {count} && imgs.every(i => i.complete && i.naturalWidth > 0);
    }}"""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(done):
        if time.monotonic() > deadline:
            raise AssertionError(f"expected {count} pictures in the grid, it shows {page.locator(GRID_IMAGES).count()}")
        page.wait_for_timeout(300)


def pick(page, key: str, typed: str) -> None:
    """Choose an option of a multiselect by typing part of it, as a user does."""
    box = page.locator(f".st-key-{key} input")
    box.click()
    box.fill(typed)
    page.keyboard.press("Enter")
    page.keyboard.press("Escape")
    page.wait_for_timeout(400)


@pytest.mark.browser
def test_a_catalog_run_in_a_real_browser(backend, app_url, artifacts):  # noqa: F811
    names = []
    for n, category in enumerate(("bottles", "skincare")):
        name = f"shop-{uuid.uuid4().hex[:4]}-{n}"
        r = backend.post("/v1/products", data={"name": name, "trigger": f"qz{n} bottle", "category": category},
                         files={"photo": (f"{name}.png", packshot(80, 112), "image/png")})
        assert r.status_code == 201, r.text
        names.append(name)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 1300})
        page.goto(f"{app_url}/catalog")
        expect(page.get_by_text("Generator: Online")).to_be_visible(timeout=30_000)
        for name in names:
            pick(page, "catalog_products", name)
        pick(page, "catalog_styles", "Studio white")
        pick(page, "catalog_styles", "Marble countertop")
        thumb = page.get_by_role("slider", name="Pictures of each product in each style")
        thumb.focus()
        thumb.press("ArrowLeft")
        thumb.press("ArrowLeft")
        page.get_by_text("Advanced settings").click()
        steps = page.get_by_role("spinbutton", name="Steps", exact=True)
        steps.fill("2")
        steps.press("Enter")
        expect(page.get_by_text("2 products × 2 styles × 2 pictures = 8 pictures")).to_be_visible(timeout=15_000)
        expect(page.get_by_text("Cost: 8 standard pictures of work")).to_be_visible()
        page.mouse.move(5, 5)
        scroll_to_top(page)
        page.screenshot(path=str(artifacts / "catalog-picked.png"), full_page=True)

        page.get_by_role("button", name="Make 8 pictures").click()
        grid_loaded(page, 8)
        expect(page.get_by_text("Your catalog · 8 of 8 pictures ready")).to_be_visible(timeout=15_000)
        run_url = page.evaluate("window.location.href")
        page.set_viewport_size({"width": 1440, "height": 2000})  # the page scrolls inside: all of the grid
        page.mouse.move(5, 5)
        scroll_to_top(page)
        page.screenshot(path=str(artifacts / "catalog-grid.png"), full_page=True)

        again = browser.new_page(viewport={"width": 1440, "height": 1300})  # a reload, or the link elsewhere
        again.goto(run_url)
        grid_loaded(again, 8, timeout_s=30)
        on_a_phone(browser.new_page(viewport=PHONE, device_scale_factor=2), run_url, names[0], artifacts)
        browser.close()
    assert "/catalog?jobs=" in run_url and len(catalog_run.ids_from_url(run_url.split("jobs=")[1])) == 4, run_url


def on_a_phone(phone, run_url: str, name: str, artifacts) -> None:
    """The run's link on a phone, then a second run of one product in two styles, one picture each."""
    phone.goto(run_url)
    grid_loaded(phone, 8, timeout_s=30)
    first = catalog_run.ids_from_url(run_url.split("jobs=")[1])[0]
    label, *pictures = columns(phone, f".st-key-catalog-row-{first}")
    assert label["width"] > 300 and label["bottom"] <= pictures[0]["top"], "the style's name above its pictures"
    assert abs(pictures[0]["top"] - pictures[1]["top"]) < 2 and pictures[1]["left"] >= pictures[0]["right"], \
        "two pictures a row (stacked, each was a screen wide)"
    assert pictures[2]["top"] >= pictures[0]["bottom"], pictures

    phone.get_by_text("Start another catalog run").click()
    expect(phone.locator(".st-key-catalog_products input")).to_be_visible()
    phone.wait_for_timeout(300)  # the expander still opening takes no typing
    pick(phone, "catalog_products", name)
    pick(phone, "catalog_styles", "Studio white")
    pick(phone, "catalog_styles", "Marble countertop")
    expect(phone.locator(".st-key-catalog_styles").get_by_text("Marble countertop")).to_be_visible()  # measured once in
    assert not phone.evaluate(OVERFLOWS, ".st-key-catalog_styles"), "every style picked in sight, none scrolled off"
    thumb = phone.get_by_role("slider", name="Pictures of each product in each style")
    thumb.focus()
    for _ in range(3):
        thumb.press("ArrowLeft")
    phone.get_by_text("Advanced settings").click()
    steps = phone.get_by_role("spinbutton", name="Steps", exact=True)
    steps.fill("2")
    steps.press("Enter")
    phone.get_by_role("button", name="Make 2 pictures").click()
    expect(phone.get_by_text(re.compile(r"Your catalog · \d of 2 pictures ready"))).to_be_visible(timeout=30_000)
    phone.wait_for_function(IN_UPPER_THIRD, arg=".st-key-catalog-head", timeout=15_000)  # the button is far above
    phone.wait_for_timeout(500)
    phone.screenshot(path=str(artifacts / "catalog-phone.png"))


@pytest.mark.browser
def test_what_the_catalog_says_before_a_run_and_after_a_stop(backend, app_url, artifacts):  # noqa: F811
    """A product not learnt, drawn: said, with the way to place it; steps out of range: said, Make waits (the
    field's own range kept 200 to the browser, and the run went at each style's own); Stop, then the pictures it
    left unmade offered again (catalog-warnings.png, catalog-stopped.png)."""
    name = f"shop-{uuid.uuid4().hex[:4]}"
    r = backend.post("/v1/products", data={"name": name, "trigger": "qz bottle", "category": "bottles"},
                     files={"photo": (f"{name}.png", packshot(80, 112), "image/png")})
    assert r.status_code == 201, r.text
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 1300})
        page.goto(f"{app_url}/catalog")
        expect(page.get_by_text("Generator: Online")).to_be_visible(timeout=30_000)
        page.get_by_text("Drawn by Showroom").click()
        pick(page, "catalog_products", name)
        pick(page, "catalog_styles", "Studio white")
        expect(page.get_by_text(f"Showroom has not learnt {name} yet.")).to_be_visible(timeout=15_000)
        make = page.get_by_role("button", name="Make 4 pictures")
        expect(make).to_be_enabled()
        page.get_by_text("Advanced settings").click()
        steps = page.get_by_role("spinbutton", name="Steps", exact=True)
        steps.fill("200")
        steps.press("Enter")
        expect(page.get_by_text("the field under Advanced settings says 200")).to_be_visible(timeout=15_000)
        expect(make).to_be_disabled()
        page.mouse.move(5, 5)
        scroll_to_top(page)
        page.screenshot(path=str(artifacts / "catalog-warnings.png"), full_page=True)

        steps.fill("150")
        steps.press("Enter")
        expect(page.get_by_text("at 150 steps")).to_be_visible(timeout=15_000)
        page.get_by_role("button", name="Place exactly as photographed").click()
        expect(page.get_by_text(f"Showroom has not learnt {name} yet.")).to_have_count(0, timeout=15_000)
        thumb = page.get_by_role("slider", name="Pictures of each product in each style")
        thumb.focus()
        for _ in range(12):
            thumb.press("ArrowRight")
        page.get_by_role("button", name="Make 16 pictures").click()
        stop = page.locator(".st-key-catalog-stop button:visible")  # a button with help is drawn twice, once hidden
        expect(stop).to_be_visible(timeout=30_000)
        stop.click()
        again = page.locator(".st-key-catalog-again button:visible")
        expect(again).to_be_visible(timeout=60_000)
        page.mouse.move(5, 5)
        page.screenshot(path=str(artifacts / "catalog-stopped.png"))
        assert re.search(r"Make the \d+ pictures? not made$", again.inner_text().strip()), again.inner_text()
        stopped = catalog_run.ids_from_url(page.evaluate("window.location.href").split("jobs=")[1])
        again.click()
        expect(stop).to_be_visible(timeout=30_000)  # the pictures not made, on their way
        run = catalog_run.ids_from_url(page.evaluate("window.location.href").split("jobs=")[1])
        browser.close()
    for job_id in run:
        backend.post(f"/v1/jobs/{job_id}/cancel")  # the shared backend is free for the next test
    assert len(stopped) == len(run) == 1 and run != stopped, "the stopped job made none: the new one took its place"
