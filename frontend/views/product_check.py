"""After Showroom has learnt a product: four pictures of it in the studio style, beside its cut-out, so the
owner sees at a glance whether it learnt the product. The check is an ordinary job (its id rides in the
URL as ?check=<id>), followed from storage like any other."""

import uuid

import streamlit as st

from backend.contract import check_spec
from backend.storage import StorageError
from frontend import services
from frontend.client import BackendError
from frontend.jobs import JobView, is_job_id, load_job
from frontend.views import job_panel

CHECKS = "product_checks"   # product name -> its latest check job in this session
POLL_S = 1.0


def draw(product: dict, packshot: bytes | None, learnt_check: str | None = None) -> None:
    """`learnt_check`: the test pictures the backend made when its latest training succeeded, shown until the
    owner asks for others."""
    name = product["name"]
    st.markdown("##### Check what it learnt")
    health = services.current_health()
    if st.button("Make 4 test pictures in the studio style", key="check", icon=":material/fact_check:",
                 disabled=not health.can_generate,
                 help="Four pictures of the product on a white background, drawn from what Showroom learnt, beside "
                      "its cut-out: if they look like your product, it has learnt it."):
        _start(name)
    check_id = st.query_params.get("check")
    check_id = check_id if is_job_id(check_id) else st.session_state.get(CHECKS, {}).get(name) or learnt_check
    if check_id:
        _side_by_side(check_id, packshot)


def _start(name: str) -> None:
    try:
        templates = services.current_catalog().get("templates", [])
        ticket = services.client().submit(check_spec(name, [t.get("id") for t in templates]),
                                          idempotency_key=uuid.uuid4().hex)
    except BackendError as e:
        st.error(f"The test pictures were not started: {e.message}")
        return
    st.session_state.setdefault(CHECKS, {})[name] = st.query_params["check"] = ticket["id"]
    services.queue_changed()
    st.rerun()


def _side_by_side(check_id: str, packshot: bytes | None) -> None:
    try:
        first = load_job(services.storage(), check_id)
    except StorageError:
        first = None
    polling = first is None or first.needs_polling

    @st.fragment(run_every=POLL_S if polling else None)
    def live() -> None:
        try:
            view = load_job(services.storage(), check_id)
        except StorageError as e:
            st.warning(f"Storage is not answering ({e}); retrying.")
            return
        if view is None:
            st.caption("Starting the test pictures…")
            return
        if polling and not view.needs_polling:
            st.rerun()  # once, so the fragment is drawn again without its timer
        _draw(view, packshot)

    live()


def _draw(view: JobView, packshot: bytes | None) -> None:
    with st.container(key="check-compare"):  # on a phone, the pictures alone (chrome.CSS)
        mine, made = st.columns([1, 2], gap="medium")
    with mine, st.container(key="check-mine"):
        if packshot is not None:
            st.image(services.cutout_on_checkerboard(packshot), caption="Your product", width="stretch")
    with made:
        for start in (0, 2):
            with st.container(key=f"pair-check-{start}"):  # two a row on a phone too (chrome.CSS): four screens tall
                row = st.columns(2)
            for column, img in zip(row, view.images[start:start + 2]):
                with column, st.container(key=f"check-{img.index}"):
                    if img.done:
                        try:
                            st.image(services.image_bytes(services.settings().storage_url, img.key), width="stretch")
                        except StorageError:
                            st.caption("Made, but not readable just now.")
                    else:
                        job_panel.tile(view, img)
        st.caption(f"Drawn by Showroom from what it learnt · {view.done_count} of {len(view.images)} ready")
