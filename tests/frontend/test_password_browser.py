"""A protected studio in a real browser: a link to any page, with its query, still shows that page after the password
(the password page sent every link but a job's to the Create page, query and all)."""

import pytest
from playwright.sync_api import expect, sync_playwright

from tests.frontend.conftest import SMALL
from tests.frontend.test_browser import CHROMIUM, CHROMIUM_ARGS, streamlit_app

PASSWORD = "open sesame"


@pytest.fixture
def protected_url(backend, tmp_path):
    """`streamlit run` as test_browser's app_url starts it, with APP_PASSWORD set."""
    yield from streamlit_app(backend, tmp_path, APP_PASSWORD=PASSWORD)


@pytest.mark.browser
def test_each_link_shows_its_own_page_after_the_password(backend, protected_url):
    job = backend.submit({"prompt": "a teapot", "num_images": 1, **SMALL})["id"]
    links = {f"/catalog?jobs={job}": "Picture many products in many styles", "/history": "Your jobs",
             "/products?product=teapot": "Your products"}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for link, shown in links.items():
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(protected_url + link)
            password = page.get_by_label("Password", exact=True)
            expect(password).to_be_visible(timeout=30_000)
            assert not page.get_by_role("link", name="History").is_visible(), "no way round the password"
            password.fill(PASSWORD)
            password.press("Enter")
            expect(page.get_by_text("Generator: Online")).to_be_visible(timeout=30_000)
            page.wait_for_timeout(500)
            assert page.evaluate("location.pathname + location.search") == link, link
            expect(page.get_by_text(shown).first).to_be_visible(timeout=15_000)
            page.close()
        browser.close()
