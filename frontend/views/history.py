"""History: jobs read from storage (so it works with the generator off), newest first, filtered by product
and status, older ones a page at a time; each can be opened, reused or deleted."""

import html

import streamlit as st

from backend.storage import StorageError
from frontend import nav, services
from frontend.client import BackendError
from frontend.jobs import JobView, format_elapsed, parse_time
from frontend.views import job_actions
from frontend.views.job_panel import BADGES

LIMIT = 24
PER_ROW = 4
ALL = ""  # not None: a selectbox shows None as "nothing chosen yet"
STATUSES = {"active": "In progress", "succeeded": "Done", "failed": "Failed", "canceled": "Canceled"}
CURSORS = "history_cursors"   # where each page shown starts: [None, <before>, ...]


def draw() -> None:
    st.markdown("#### Your jobs")
    url = services.settings().storage_url
    if not url:
        st.error("STORAGE_URL is not set, so there is no history to show: set it to the backend's storage.")
        return
    product, status = _filters()
    try:
        pages = [services.history(url, LIMIT, before, product, status)
                 for before in st.session_state.setdefault(CURSORS, [None])]
    except StorageError as e:
        st.error(f"The results store cannot be read right now: {e}")
        return
    jobs = [job for page in pages for job in page.jobs]
    if not jobs:
        _empty(filtered=bool(product or status))
        return
    st.caption(f"{len(jobs)} job{'s' if len(jobs) != 1 else ''}, newest first. Open one to see every picture, "
               "download or upscale; Reuse puts its settings in the Create form.")
    for start in range(0, len(jobs), PER_ROW):
        for column, job in zip(st.columns(PER_ROW), jobs[start:start + PER_ROW]):
            with column:
                _card(url, job)
    if pages[-1].before and st.button("Load older jobs", key="history-more", icon=":material/expand_more:"):
        st.session_state[CURSORS].append(pages[-1].before)
        st.rerun()


def _filters() -> tuple[str | None, str | None]:
    try:
        names = [p["name"] for p in services.product_records()]
    except StorageError:
        names = []
    if st.session_state.get("history_product", ALL) not in (ALL, *names):
        st.session_state["history_product"] = ALL  # a product deleted since
    left, right = st.columns([1, 2], vertical_alignment="bottom")
    product = left.selectbox("Product", [ALL, *names], key="history_product", on_change=_restart,
                             format_func=lambda n: n or "All products")
    status = right.pills("Status", list(STATUSES), key="history_status", format_func=STATUSES.get,
                         on_change=_restart)
    return product or None, status or None


def _restart() -> None:
    st.session_state[CURSORS] = [None]  # another filter: its pages start again from the newest


def _empty(filtered: bool) -> None:
    if filtered:
        st.markdown('<div class="sr-empty"><h3>No jobs match</h3>Choose another product or status.</div>',
                    unsafe_allow_html=True)
        return
    st.markdown('<div class="sr-empty"><h3>No pictures yet</h3>Jobs you start on the Create page '
                'are kept here, with their pictures.</div>', unsafe_allow_html=True)
    st.page_link(nav.page("create"), label="Create your first pictures", icon=":material/auto_awesome:")


def _card(url: str, job: JobView) -> None:
    with st.container(border=True, key=f"job-{job.id}"):
        label, color = BADGES.get(job.status, (job.status, "gray"))
        cover = next((img for img in job.images if img.done), None)
        if cover is not None:
            try:
                st.image(services.thumbnail(url, cover.key), width="stretch")
            except StorageError:
                _tile("failed", "The picture could not be read just now")
        else:
            _tile(job.status, label)
        st.badge(label, color=color)
        st.markdown(f'<div class="sr-prompt">{html.escape(_shorten(job.prompt, 90))}</div>',
                    unsafe_allow_html=True)
        st.markdown(f'<span class="sr-meta">{_when(job)} · {job.done_count}/{len(job.images)} pictures'
                    f'{" · " + html.escape(job.product) if job.product else ""}</span>', unsafe_allow_html=True)
        if st.session_state.get("confirm_delete_job") == job.id:
            _confirm_delete(job)
        else:
            _buttons(job)


def _tile(status: str, text: str) -> None:
    st.markdown(f'<div class="sr-slot sr-slot-{status}" style="aspect-ratio: 1 / 1"><b>{html.escape(text)}</b>'
                '</div>', unsafe_allow_html=True)


def _buttons(job: JobView) -> None:
    with st.container(horizontal=True, gap="small"):
        if st.button("Open", key=f"open-{job.id}", icon=":material/open_in_full:"):
            nav.open_job(job.id)
        if st.button("Reuse", key=f"reuse-{job.id}", icon=":material/tune:",
                     help="Open the Create page with this job's settings", disabled=not job.spec):
            job_actions.use_settings(job)
            nav.open_job(job.id)
        offline = services.current_health().state == "offline"
        if st.button("Delete", key=f"delete-{job.id}", icon=":material/delete:", disabled=offline,
                     help="Deleting needs the generator, which is offline" if offline else None):
            st.session_state["confirm_delete_job"] = job.id
            st.rerun()


def _confirm_delete(job: JobView) -> None:
    st.markdown(f"**Delete this job and its {len(job.images)} pictures?** This cannot be undone.")
    with st.container(horizontal=True, gap="small"):
        confirmed = st.button("Delete for good", key=f"delete-yes-{job.id}", type="primary")
        if st.button("Keep it", key=f"delete-no-{job.id}"):
            st.session_state.pop("confirm_delete_job", None)
            st.rerun()
    if confirmed:
        try:
            services.client().delete_job(job.id)
        except BackendError as e:
            st.error(f"The job was not deleted: {e.message}")
            return
        st.session_state.pop("confirm_delete_job", None)
        if st.session_state.get("open_job") == job.id:
            st.session_state.pop("open_job")
        services.history.clear()
        st.toast("Job deleted.")
        st.rerun()


def _when(job: JobView) -> str:
    created = parse_time(job.created_at)
    stamp = created.strftime("%d %b %H:%M UTC") if created else "unknown time"
    return f"{stamp} · {format_elapsed(job.elapsed_s())}" if job.terminal else stamp


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1].rstrip() + "…"
