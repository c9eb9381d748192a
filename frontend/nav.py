"""The app's pages, built by the entry point on every run, so that one view can link to another.

Pages are small files (app_pages/) rather than callables: a file page can be opened by path from
`st.switch_page` and from AppTest's `switch_page` alike.
"""

from pathlib import Path

import streamlit as st

HERE = Path(__file__).resolve().parent
PAGES: dict[str, st.Page] = {}


def build() -> list[st.Page]:
    PAGES.update(
        create=st.Page(HERE / "app_pages" / "create.py", title="Create", icon=":material/auto_awesome:",
                       url_path="create", default=True),
        catalog=st.Page(HERE / "app_pages" / "catalog.py", title="Catalog", icon=":material/grid_view:",
                        url_path="catalog"),
        history=st.Page(HERE / "app_pages" / "history.py", title="History", icon=":material/photo_library:",
                        url_path="history"),
        products=st.Page(HERE / "app_pages" / "products.py", title="Products", icon=":material/inventory_2:",
                         url_path="products"),
    )
    return list(PAGES.values())


def page(name: str) -> st.Page:
    return PAGES[name]


def open_job(job_id: str) -> None:
    """Show a job on the Create page, with its id in the URL so the link can be shared."""
    st.switch_page(page("create"), query_params={"job": job_id})


def focus_product(name: str | None) -> None:
    """Open a product beside the products list, its name in the URL (None: the form to add one)."""
    st.session_state["open_product"] = name
    for key in ("product", "check"):
        st.query_params.pop(key, None)
    if name:
        st.query_params["product"] = name
