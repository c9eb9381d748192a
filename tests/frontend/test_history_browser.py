"""History in a real browser: a card's Open, Reuse and Delete share one line at four cards a row in a 1400 px
and a 1024 px window (Delete wrapped onto a line of its own in every card), and on a phone, two cards a row,
they stay inside their card with their words whole (history-desktop.png, history-laptop.png, history-phone.png)."""

import pytest
from playwright.sync_api import sync_playwright

from tests.frontend.conftest import SMALL
from tests.frontend.test_browser import CHROMIUM, CHROMIUM_ARGS, app_url  # noqa: F401
from tests.frontend.test_phone_browser import PHONE

# Labels Streamlit cut with an ellipsis (text wider inside than out), not counting the 1 px screen-reader name it
# gives an icon-only button ("delete icon").
CUT_LABELS = """(selector) => [...document.querySelectorAll(selector)]
    .filter(b => [...b.querySelectorAll('*')].some(e => e.scrollWidth > e.clientWidth + 1 &&
                                                       getComputedStyle(e).position !== 'absolute'))
    .map(b => b.innerText.trim())"""

# Each card's Open, Reuse and Delete: where each is drawn (Streamlit keeps a hidden copy of a button with a tooltip).
ACTIONS = """(ids) => ids.map(id => {
    const card = document.querySelector(`.st-key-job-${id}`).getBoundingClientRect();
    const buttons = ['open', 'reuse', 'delete'].map(k => [...document.querySelectorAll(`.st-key-${k}-${id} button`)]
        .map(b => b.getBoundingClientRect()).find(r => r.width > 0));
    return {tops: buttons.map(b => Math.round(b.top)), outside: buttons.some(b => b.right > card.right + 1)};
})"""


@pytest.mark.browser
def test_a_history_cards_actions_share_one_line_on_a_desktop(backend, app_url, artifacts):  # noqa: F811
    ids = [backend.submit({"prompt": prompt, "num_images": 1, **SMALL})["id"]
           for prompt in ("a red mug", "a green bottle on a beach at dusk", "a teapot", "a vase of tulips")]
    for job_id in ids:
        backend.wait_job(job_id)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for name, viewport in (("desktop", {"width": 1400, "height": 900}), ("laptop", {"width": 1024, "height": 768}),
                               ("phone", PHONE)):
            page = browser.new_page(viewport=viewport)
            page.goto(f"{app_url}/history")
            page.wait_for_function("(ids) => ids.every(id => document.querySelector(`.st-key-delete-${id} button`))",
                                   arg=ids, timeout=30_000)
            page.wait_for_timeout(500)  # the page's style may land a moment after the cards
            cards = page.evaluate(ACTIONS, ids)
            assert not [c for c in cards if c["outside"]], f"{name}: a card's buttons run past its edge: {cards}"
            assert page.evaluate(CUT_LABELS, ".st-key-history-grid button") == [], f"{name}: a label cut short"
            page.locator(f".st-key-delete-{ids[-1]} button:visible").scroll_into_view_if_needed()
            page.screenshot(path=str(artifacts / f"history-{name}.png"))
            if name != "phone":
                assert all(len(set(c["tops"])) == 1 for c in cards), f"Open, Reuse and Delete on one line: {cards}"
        browser.close()
