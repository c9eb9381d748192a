"""A frontend whose API key the backend refuses says so in its header, and offers nothing that would be refused
(the pill read "Generator: Online" while every click was answered "the backend refused the API key")."""

import html

from tests.frontend.conftest import SMALL, assert_no_exception, frontend_env, page_text

REFUSED = "The backend refused this app's API key: set API_KEY to the backend's key"


def test_a_refused_key_is_said_in_the_header_and_nothing_is_offered_that_it_would_refuse(backend, open_app):
    job = backend.wait_job(backend.submit({"prompt": "a teapot", "num_images": 1, **SMALL})["id"])
    at = open_app(frontend_env(backend, API_KEY="not-the-key"), job=job["id"])
    assert_no_exception(at)
    text = html.unescape(page_text(at))  # the header's words are escaped HTML
    assert "Generator: Key refused" in text and "Generator: Online" not in text, text[:1500]
    assert REFUSED in text
    assert at.button(key="job-vary").disabled, "More like this would only be refused"
    assert not [b for b in at.button if b.key == "generate" and not b.disabled]


def test_the_right_key_keeps_the_header_online(backend, open_app):
    at = open_app(frontend_env(backend))
    assert "Generator: Online" in page_text(at) and "Key refused" not in page_text(at)
