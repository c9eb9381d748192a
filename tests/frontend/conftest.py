"""Frontend fixtures: the app's settings pointed at a real backend, and AppTest runs of the real app."""

import time
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from backend.tools.seaweed import free_port

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "frontend" / "streamlit_app.py"
FRONTEND_NAMES = ("BACKEND_URL", "API_KEY", "STORAGE_URL", "S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                  "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "APP_PASSWORD", "GPU_HOUR_PRICE")
SMALL = {"steps": 2, "width": 64, "height": 64}


def frontend_env(backend, **overrides) -> dict[str, str]:
    """What the frontend is given to reach this backend and its storage."""
    env = {name: backend.env[name] for name in FRONTEND_NAMES if name in backend.env}
    return env | {"BACKEND_URL": backend.url} | overrides


def offline_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there


@pytest.fixture
def open_app(monkeypatch):
    """open_app(env, job=None, secrets=None) -> an AppTest of the real app, run once."""

    def open_(env: dict[str, str], job: str | None = None, secrets: dict | None = None) -> AppTest:
        for name in FRONTEND_NAMES:
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        st.cache_data.clear()  # each test starts as a fresh server would: no catalog, history or health kept
        at = AppTest.from_file(APP, default_timeout=60)
        if job:
            at.query_params["job"] = job
        if secrets:
            at.secrets.update(secrets)
        return at.run()

    return open_


def run_until(at: AppTest, done, timeout: float = 60, what: str = "the condition") -> AppTest:
    """Rerun the app (as the polling fragment would) until done(at) holds."""
    deadline = time.monotonic() + timeout
    while not done(at):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} never held; page text: {page_text(at)[:2000]}")
        time.sleep(0.3)
        at.run()
    return at


def page_text(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption] + [w.value for w in at.warning]
    parts += [e.value for e in at.error] + [i.value for i in at.info] + [s.value for s in at.success]
    return "\n".join(str(p) for p in parts)


def shown_images(at: AppTest) -> int:
    return sum(len(image.value) for image in at.image)


def placeholder_tiles(at: AppTest) -> int:
    """Tiles drawn for images that are not ready (waiting, generating, failed or canceled)."""
    return sum('class="sr-slot ' in str(m.value) for m in at.markdown)


def assert_no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
