"""Showroom's frontend: `streamlit run frontend/streamlit_app.py` from the repo root.

The entry point only frames the app (password, header, navigation); the pages in views/ draw.
It needs frontend/requirements.txt alone: no torch, no diffusers, nothing from backend/ but storage.
"""

import sys
from pathlib import Path

# Streamlit puts only this folder on sys.path; the repo root makes `frontend.*` and `backend.storage` importable.
ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import streamlit as st  # noqa: E402

from frontend import nav, services  # noqa: E402
from frontend.auth import admitted, require_password  # noqa: E402
from frontend.settings import SecretsUnreadable  # noqa: E402
from frontend.views import chrome, compose, job_actions  # noqa: E402

st.set_page_config(page_title="Showroom", page_icon="◆", layout="wide", initial_sidebar_state="collapsed")
chrome.inject_css()
try:
    app_password = services.settings().app_password
except SecretsUnreadable as e:  # fail closed: the broken file may be the one holding the password
    st.error(f"Showroom cannot start: {e}.")
    st.stop()
# The page is chosen before the password is asked for, so a link's page and query are still there after it (a run
# that stops before st.navigation is the main page's: the browser's address went back to "/"). Its links stay hidden.
page = st.navigation(nav.build(), position="top" if admitted(app_password) else "hidden")
require_password(app_password)
compose.keep_compose_state()
job_actions.apply_pending()  # "Use these settings": before any widget is drawn
status = chrome.header()
page.run()
with status:  # the status again, after the page: its queue count holds the pictures the page just sent
    chrome.live_status()
