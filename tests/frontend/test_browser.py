"""A real browser on the real app: headless Chromium (Debian's) driven by Playwright, the real backend behind it."""

import re
import subprocess
import sys
import time
import zipfile

import pytest
import requests
from playwright.sync_api import expect, sync_playwright

from backend.tools.seaweed import free_port
from tests.factories import packshot
from tests.frontend.conftest import REPO, frontend_env
from tests.frontend.photos import product_photos

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
RESULT_IMAGES = '[class*="st-key-result-"] img:not(.sr-preview)'  # final pictures, not the previews
# Every placeholder tile lies within its own element, so what follows keeps its distance (Streamlit pulls a text
# block's bottom up by 1rem: the Catalog's tiles one above the other touched, a tile met its step count).
SLOTS_KEEP_THEIR_ROOM = """() => {
    const slots = [...document.querySelectorAll('.sr-slot')];
    return slots.length > 0 && slots.every(s =>
        s.getBoundingClientRect().bottom <= s.closest('[data-testid=stMarkdown]').getBoundingClientRect().bottom + 1);
}"""


@pytest.fixture
def app_url(backend, tmp_path):
    """`streamlit run` exactly as the contract starts it, from the repo root, with the backend's settings."""
    yield from streamlit_app(backend, tmp_path)


def streamlit_app(backend, tmp_path, **settings):
    """Start the app (the frontend's `settings` over the backend's), yield its URL, stop it."""
    port = free_port()
    with open(tmp_path / "streamlit.log", "wb") as log:  # the child keeps its own copy of the handle
        process = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "frontend/streamlit_app.py", "--server.port", str(port),
             "--server.headless", "true"],
            cwd=REPO, env=backend.env | frontend_env(backend, **settings), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if requests.get(f"{url}/_stcore/health", timeout=2).ok:
                break
        except requests.RequestException:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"streamlit did not start:\n{(tmp_path / 'streamlit.log').read_text()[-3000:]}")
        time.sleep(0.3)
    yield url
    process.terminate()
    process.wait(20)


def all_images_loaded(page, count: int) -> bool:
    return page.evaluate(f"""() => {{
        const imgs = [...document.querySelectorAll('{RESULT_IMAGES}')];
        return imgs.length === {count} && imgs.every(i => i.complete && i.naturalWidth > 0);
    }}""")


def wait_images(page, count: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not all_images_loaded(page, count):
        if time.monotonic() > deadline:
            raise AssertionError(f"expected {count} rendered images, page shows "
                                 f"{page.locator(RESULT_IMAGES).count()}")
        page.wait_for_timeout(300)


@pytest.mark.browser
def test_generate_in_a_real_browser_then_reload_the_job_link(backend, app_url, artifacts):
    template = backend.get("/v1/catalog").json()["templates"][1]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 1500})
        page.goto(app_url)
        expect(page.get_by_text("Generator: Online")).to_be_visible(timeout=30_000)

        page.locator(f".st-key-tpl-{template['id']} button").click()
        prompt = page.get_by_label("Prompt", exact=True)
        expect(prompt).to_have_value(template["prompt"], timeout=10_000)
        prompt.fill("<product> on a white marble plinth, soft light, a sprig of eucalyptus")
        prompt.press("Control+Enter")
        page.get_by_text("Advanced settings").click()
        steps = page.get_by_role("spinbutton", name="Steps", exact=True)
        steps.fill("2")
        steps.press("Enter")
        page.wait_for_timeout(800)
        page.get_by_role("button", name="Generate").click()

        wait_images(page, 4)
        expect(page.get_by_text("4 of 4 ready")).to_be_visible(timeout=15_000)
        job_url = page.evaluate("window.location.href")
        assert "?job=" in job_url, job_url
        page.evaluate("for (const el of document.querySelectorAll('*')) if (el.scrollTop) el.scrollTop = 0")
        page.wait_for_timeout(500)
        page.screenshot(path=str(artifacts / "frontend-generate.png"), full_page=True)
        with page.expect_download(timeout=30_000) as download:  # the ZIP is built by the page, on the click
            page.get_by_role("button", name="Download all").click()
        with zipfile.ZipFile(download.value.path()) as archive:
            names = archive.namelist()
        assert "job.json" in names and len([n for n in names if n.endswith(".png")]) == 4, names

        again = browser.new_page(viewport={"width": 1440, "height": 1500})  # another device, same link
        again.goto(job_url)
        wait_images(again, 4, timeout_s=30)
        expect(again.get_by_text("4 of 4 ready")).to_be_visible()
        again.screenshot(path=str(artifacts / "frontend-job-link.png"), full_page=True)
        browser.close()

    job_id = job_url.split("job=")[1].split("&")[0]
    spec = backend.get(f"/v1/jobs/{job_id}").json()["spec"]
    assert spec["steps"] == 2 and spec["template"] == template["id"] and "eucalyptus" in spec["prompt"]


@pytest.mark.browser
def test_place_a_product_in_a_real_browser(backend, app_url, artifacts):
    """Upload an RGBA packshot, see its cut-out and where it goes, generate, and see the pictures land."""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 1700})
        page.goto(app_url)
        expect(page.get_by_text("Generator: Online")).to_be_visible(timeout=30_000)

        page.get_by_text("Place my product — it stays exactly as it is").click()
        drop = page.locator(".st-key-photo")
        expect(drop).to_contain_text("20MB per file")  # the backend's MAX_UPLOAD_BYTES, not Streamlit's 200
        drop.locator("input[type=file]").set_input_files(
            files=[{"name": "huge.png", "mimeType": "image/png", "buffer": bytes(21_000_000)}])
        expect(drop).to_contain_text("File must be 20.0MB or smaller")  # refused by the box: nothing sent
        drop.locator("input[type=file]").set_input_files(
            files=[{"name": "bottle.png", "mimeType": "image/png", "buffer": packshot(160, 224)}])
        expect(page.get_by_text("The cut-out: kept pixel for pixel")).to_be_visible(timeout=30_000)
        scale = page.locator(".st-key-place_scale [data-testid=stSliderThumbValue]")
        expect(scale).to_have_text("60%")  # the share of the picture, not a bare 0.60
        page.get_by_role("radio", name="Right third").click()
        expect(page.get_by_text("Where it goes · 64 × 64")).to_be_visible(timeout=10_000)
        page.get_by_role("radio", name="4:5").click()
        expect(page.get_by_text("Where it goes · 64 × 80")).to_be_visible(timeout=10_000)
        page.locator(".st-key-styles-more button").click()  # the gallery shows a few styles until asked
        page.locator(".st-key-tpl-stone-podium-botanical button").click()
        expect(page.get_by_label("Prompt", exact=True)).not_to_have_value("", timeout=10_000)
        page.get_by_text("Advanced settings").click()
        steps = page.get_by_role("spinbutton", name="Steps", exact=True)
        steps.fill("2")
        steps.press("Enter")
        page.wait_for_timeout(800)
        page.evaluate("for (const el of document.querySelectorAll('*')) if (el.scrollTop) el.scrollTop = 0")
        page.wait_for_timeout(500)
        page.screenshot(path=str(artifacts / "place-preview.png"), full_page=True)

        page.get_by_role("button", name="Generate").click()
        wait_images(page, 4)
        expect(page.get_by_text("4 of 4 ready")).to_be_visible(timeout=15_000)
        job_url = page.evaluate("window.location.href")
        page.evaluate("for (const el of document.querySelectorAll('*')) if (el.scrollTop) el.scrollTop = 0")
        page.wait_for_timeout(500)
        page.screenshot(path=str(artifacts / "place-results.png"), full_page=True)
        browser.close()

    assert "?job=" in job_url, job_url
    job = backend.get(f"/v1/jobs/{job_url.split('job=')[1].split('&')[0]}").json()
    assert job["spec"]["mode"] == "place" and job["spec"]["placement"]["x"] == 0.67, job["spec"]
    assert (job["spec"]["width"], job["spec"]["height"]) == (64, 80) and job["layout_key"], job


def scroll_to_top(page) -> None:
    page.evaluate("for (const el of document.querySelectorAll('*')) if (el.scrollTop) el.scrollTop = 0")
    page.wait_for_timeout(500)


@pytest.mark.browser
def test_a_product_from_photos_taught_and_checked_in_a_real_browser(backend, app_url, artifacts):
    """Add a product from four photos, see its cut-out, teach it (10 steps), and check it: products.png."""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 1400})
        page.goto(f"{app_url}/products")
        expect(page.get_by_text("Generator: Online")).to_be_visible(timeout=30_000)
        page.get_by_role("textbox", name="Name", exact=True).fill("amber-bottle")
        page.get_by_role("textbox", name="What is it? (optional)").fill("bottle")
        page.locator(".st-key-add_photos input[type=file]").set_input_files(
            files=[{"name": n, "mimeType": t, "buffer": b} for n, b, t in product_photos(4)])
        page.wait_for_timeout(800)
        page.get_by_role("button", name="Add product").click()
        expect(page.get_by_text("Its cut-out: placed exactly as it is")).to_be_visible(timeout=30_000)
        assert "product=amber-bottle" in page.url, page.url

        page.get_by_text("Advanced").click()
        steps = page.get_by_role("spinbutton", name="Learning steps")
        steps.fill("10")
        steps.press("Enter")
        page.wait_for_timeout(800)
        page.get_by_role("button", name="Teach Showroom this product").click()
        expect(page.get_by_text("Showroom has learnt amber-bottle")).to_be_visible(timeout=90_000)
        page.get_by_role("button", name="Make 4 test pictures in the studio style").click()
        expect(page.get_by_text("4 of 4 ready")).to_be_visible(timeout=90_000)
        page.mouse.move(5, 700)  # no tooltip over the picture
        page.wait_for_timeout(800)
        scroll_to_top(page)
        page.screenshot(path=str(artifacts / "products.png"), full_page=True)

        again = browser.new_page(viewport={"width": 1440, "height": 1400})  # a reload finds it all again
        again.goto(page.url)
        expect(again.get_by_text("Showroom has learnt amber-bottle")).to_be_visible(timeout=30_000)
        browser.close()
    product = {p["name"]: p for p in backend.get("/v1/catalog").json()["products"]}["amber-bottle"]
    assert product["has_lora"] and product["packshot_key"] == "products/amber-bottle.png"


@pytest.mark.browser
def test_a_running_job_shows_progress_and_previews_in_a_real_browser(backend, app_url, artifacts):
    """A long job caught mid-way: each running picture's preview, step count and time left, each tile clear of
    what is under it (job-running.png); then the same job on a phone, two pictures a row (job-phone.png)."""
    job = backend.submit({"prompt": "a ceramic vase on a wooden table", "num_images": 4, "steps": 150,
                          "width": 128, "height": 128, "seed": 3})
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1440, "height": 1300})
            page.goto(f"{app_url}/?job={job['id']}")
            expect(page.locator("img.sr-preview").first).to_be_visible(timeout=60_000)
            expect(page.get_by_text(re.compile(r"Step \d+ of 150 · about")).first).to_be_visible(timeout=30_000)
            assert page.evaluate(SLOTS_KEEP_THEIR_ROOM), "a running picture's tile reaches into its step count"
            scroll_to_top(page)
            page.screenshot(path=str(artifacts / "job-running.png"), full_page=True)

            phone = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2)
            phone.goto(f"{app_url}/?job={job['id']}")
            expect(phone.locator(".st-key-result-1 .sr-slot")).to_be_visible(timeout=30_000)
            side_by_side = """() => {
                const [a, b] = [0, 1].map(i => document.querySelector(`.st-key-result-${i}`).getBoundingClientRect());
                return Math.abs(a.top - b.top) < 2 && b.left > a.right - 1;
            }"""
            phone.wait_for_function(side_by_side, timeout=10_000)  # two a row, not one under the other
            phone.locator(".st-key-results-grid").scroll_into_view_if_needed()
            phone.wait_for_timeout(500)
            phone.screenshot(path=str(artifacts / "job-phone.png"))
            browser.close()
    finally:
        backend.post(f"/v1/jobs/{job['id']}/cancel")


def in_viewport(page, selector: str) -> bool:
    """The element's whole box is on screen (not only in the page)."""
    return page.evaluate("""(selector) => {
        const el = document.querySelector(selector);
        if (!el) return false;
        const box = el.getBoundingClientRect();
        return box.height > 0 && box.top >= 0 && box.bottom <= window.innerHeight;
    }""", selector)


@pytest.mark.browser
def test_on_a_desktop_a_style_can_be_undone_and_generate_shows_the_jobs_status(backend, app_url, artifacts):
    """1400×1000: a style chosen over typed words offers Undo (style-undo.png); after Generate, far down the
    form, the job's status line, elapsed time and Cancel are on screen (generate-desktop.png)."""
    template = backend.get("/v1/catalog").json()["templates"][0]
    blocker = backend.submit({"prompt": "a chair", "num_images": 16, "steps": 150, "width": 128, "height": 128})
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(app_url)
            expect(page.get_by_text("Generator: Online")).to_be_visible(timeout=30_000)
            prompt = page.get_by_label("Prompt", exact=True)
            prompt.fill("my own words: <product> on a windowsill")
            prompt.press("Control+Enter")
            page.wait_for_timeout(800)
            page.locator(f".st-key-tpl-{template['id']} button").click()
            expect(prompt).to_have_value(template["prompt"], timeout=10_000)
            undo = page.locator(".st-key-style-undo-yes button:visible")  # a button with help is drawn twice
            expect(undo).to_be_visible()
            page.locator(f".st-key-style-card-{template['id']}").scroll_into_view_if_needed()
            page.wait_for_timeout(300)
            page.screenshot(path=str(artifacts / "style-undo.png"))
            undo.click()
            expect(prompt).to_have_value("my own words: <product> on a windowsill", timeout=10_000)

            generate = page.get_by_role("button", name="Generate")
            generate.scroll_into_view_if_needed()
            assert not in_viewport(page, ".st-key-job-status") and page.evaluate(
                "document.querySelector('.stMain').scrollTop") > 200, "the button is far down the form"
            generate.click()
            expect(page.locator(".st-key-cancel-job button")).to_be_visible(timeout=30_000)
            page.wait_for_function("""() => {
                const status = document.querySelector('.st-key-job-status');
                const box = status && status.getBoundingClientRect();
                return box && box.top >= 0 && box.bottom <= window.innerHeight;
            }""", timeout=10_000)
            page.wait_for_timeout(500)
            for selector in (".st-key-job-status", ".st-key-cancel-job"):
                assert in_viewport(page, selector), f"{selector} is off screen after Generate"
            expect(page.locator(".st-key-job-status").get_by_text(re.compile(r"0 of 4 ready · \d+ s elapsed"))) \
                .to_be_visible()
            page.screenshot(path=str(artifacts / "generate-desktop.png"))
            job_id = page.evaluate("window.location.href").split("job=")[1].split("&")[0]
            browser.close()
    finally:
        backend.post(f"/v1/jobs/{blocker['id']}/cancel")
    backend.post(f"/v1/jobs/{job_id}/cancel")


@pytest.mark.browser
def test_on_a_phone_the_pages_are_one_tap_away_and_width_and_height_share_a_row(backend, app_url, artifacts):
    """390×844: labelled links to every page (phone-nav.png), style chips that wrap instead of running off,
    and Width beside Height in Advanced settings (phone-settings.png)."""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        phone = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2)
        phone.goto(app_url)
        expect(phone.get_by_text("Generator: Online")).to_be_visible(timeout=30_000)
        nav = phone.locator(".st-key-phone-nav")
        for name in ("Create", "History", "Products"):
            expect(nav.get_by_role("link", name=name)).to_be_visible()
        assert in_viewport(phone, ".st-key-phone-nav")
        phone.wait_for_timeout(500)
        phone.screenshot(path=str(artifacts / "phone-nav.png"))

        chips = phone.locator(".st-key-style_category button")
        expect(chips.first).to_be_visible()
        rights = [chips.nth(i).bounding_box() for i in range(chips.count())]
        assert len(rights) > 6 and all(b["x"] + b["width"] <= 390 for b in rights), "every chip on screen"
        assert len({round(b["y"]) for b in rights}) > 1, "the chips wrap onto more lines"

        phone.get_by_text("Advanced settings").click()
        width = phone.get_by_role("spinbutton", name="Width")
        height = phone.get_by_role("spinbutton", name="Height")
        expect(height).to_be_visible()
        height.scroll_into_view_if_needed()
        phone.wait_for_timeout(500)
        w, h = width.bounding_box(), height.bounding_box()
        assert abs(w["y"] - h["y"]) < 2 and h["x"] >= w["x"] + w["width"], (w, h)
        assert in_viewport(phone, ".st-key-phone-nav"), "the links stay at the top while the page scrolls"
        phone.screenshot(path=str(artifacts / "phone-settings.png"))

        nav.get_by_role("link", name="History").click()
        expect(phone.get_by_text("Your jobs")).to_be_visible(timeout=30_000)
        assert phone.url.rstrip("/").endswith("/history"), phone.url
        browser.close()
