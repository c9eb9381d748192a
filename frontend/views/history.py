"""History: jobs read from storage (so it works with the generator off), newest first, filtered by product
and status, a page at a time; each can be opened, reused or deleted.

Only the page on screen has its covers read (a small thumbnail each, cached once made); a cover that
is gone from storage has its job's folder listed, so the card counts the pictures that really exist.
"""

import html

import streamlit as st

from backend.storage import ObjectMissing, StorageError
from frontend import clock, nav, placement, reuse, services
from frontend.client import BackendError
from frontend.jobs import JobView, load_job, parse_time
from frontend.views import job_actions, scroll
from frontend.views.job_panel import badge

LIMIT = 12   # jobs a page: three rows of four, about what a screen shows
PER_ROW = 4
ALL = ""  # not None: a selectbox shows None as "nothing chosen yet"
STATUSES = {"active": "In progress", "succeeded": "Done", "failed": "Failed", "canceled": "Canceled"}
CURSORS = "history_cursors"   # where each page from the newest to the one shown starts: [None, <before>, ...]
# how a job was made, in a card's few words; the Create page's own name for the mode is its tooltip
MADE = {"place": "Product placed", "restyle": "Photo restyled", "generate": "From the prompt"}


def draw() -> None:
    st.markdown("#### Your jobs")
    url = services.settings().storage_url
    if not url:
        st.error("STORAGE_URL is not set, so there is no history to show: set it to the backend's storage.")
        return
    try:
        products = services.product_records()
    except StorageError:
        products = []
    triggers = services.product_triggers(products)  # read once: each card shows its product's name, not these words
    tests = services.test_picture_jobs(products)
    styles = services.style_names()
    product, status = _filters(list(triggers))
    cursors = st.session_state.setdefault(CURSORS, [None])
    try:
        page = services.history(url, LIMIT, cursors[-1], product, status)
    except StorageError as e:
        st.error(f"The results store cannot be read right now: {e}")
        return
    if not page.jobs and len(cursors) > 1:  # its last jobs were deleted: the page before it
        cursors.pop()
        st.rerun()
    if not page.jobs:
        _empty(filtered=bool(product or status))
        return
    first = (len(cursors) - 1) * LIMIT + 1
    upscale = " or upscale" if services.current_health().upscaler in ("replicate", "local") else ""
    st.caption(f"Jobs {first}–{first + len(page.jobs) - 1}, newest first. Open one to see every picture, "
               f"download{upscale}; Reuse puts its settings in the Create form.")
    with st.container(key="history-grid"):  # two cards a row on a phone (chrome.CSS)
        for start in range(0, len(page.jobs), PER_ROW):
            for column, job in zip(st.columns(PER_ROW), page.jobs[start:start + PER_ROW]):
                with column:
                    _card(url, job, triggers.get(job.product or ""), job.id in tests, styles.get(job.template or ""))
    _pager(len(cursors), page.before)


def _pager(number: int, older: str | None) -> None:
    if number == 1 and not older:
        return
    with st.container(horizontal=True, gap="small", vertical_alignment="center", key="history-pager"):
        st.button("Newer jobs", key="history-newer", icon=":material/chevron_left:", disabled=number == 1,
                  on_click=lambda: st.session_state[CURSORS].pop())
        st.markdown(f'<span class="sr-meta">Page {number}</span>', unsafe_allow_html=True)
        st.button("Older jobs", key="history-more", icon=":material/chevron_right:", disabled=not older,
                  on_click=lambda: st.session_state[CURSORS].append(older))


def _filters(names: list[str]) -> tuple[str | None, str | None]:
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


def _card(url: str, job: JobView, trigger: str | None, test_pictures: bool = False, style: str | None = None) -> None:
    """`style`: the name of the style it was made in, which says more at a glance than the photographer's words
    the style put in its prompt ("Beach at sunset" over "…, 70mm lens, f/4, golden hour"); they follow it."""
    with st.container(border=True, key=f"job-{job.id}"):
        job = _cover(url, job)  # the job as storage really holds it, when its cover turned out to be gone
        label, color = badge(job)
        st.badge(label, color=color)
        named = f'<b class="sr-style">{html.escape(style)}</b> · ' if style else ""
        prompt = html.escape(_shorten(reuse.shown_prompt(job, trigger), 90 - (len(style) + 3 if style else 0)))
        st.markdown(f'<div class="sr-prompt">{named}{prompt}</div>', unsafe_allow_html=True)
        if test_pictures:  # jobs the owner did not start: said, so they are not taken for someone else's
            st.markdown('<span class="sr-meta">Test pictures, made when Showroom learnt it</span>',
                        unsafe_allow_html=True)
        missing = f" ({job.missing_count} missing)" if job.missing_count else ""
        product = f' · <span class="sr-nowrap">{html.escape(job.product)}</span>' if job.product else ""
        st.markdown(f'<span class="sr-meta sr-job-meta">{_when(job)} · {job.done_count}/{len(job.images)} pictures'
                    f'{missing}{_made(job)}{product}</span>', unsafe_allow_html=True)
        if st.session_state.get("confirm_delete_job") == job.id:
            _confirm_delete(job)
        else:
            _buttons(job)


def _cover(url: str, job: JobView) -> JobView:
    """Draw the job's first picture (or a tile that says why there is none, never repeating the badge)."""
    for attempt in range(2):
        cover = next((img for img in job.images if img.done), None)
        if cover is None:
            _tile("missing" if job.missing_count else job.status, _no_cover(job))
            return job
        try:
            st.image(services.thumbnail(url, cover.key), width="stretch")
            return job
        except ObjectMissing:
            if attempt:
                break
            try:  # the manifest said it was made: the folder says what is left
                job = _as_stored(url, job.id) or job
            except StorageError:
                break
        except StorageError:
            _tile("unread", "Picture not loaded just now")
            return job
    _tile("missing", _no_cover(job))
    return job


def _no_cover(job: JobView) -> str:
    if job.missing_count:
        return "Its pictures are no longer in storage"
    return "Pictures on the way" if not job.terminal else "No pictures"


@st.cache_data(ttl=30, max_entries=64, show_spinner=False)
def _as_stored(storage_url: str, job_id: str) -> JobView | None:
    """The job with its folder listed: pictures the manifest promises but storage lacks are marked missing."""
    return load_job(services.storage(), job_id)


def _tile(status: str, text: str) -> None:
    st.markdown(f'<div class="sr-slot sr-slot-{status}" style="aspect-ratio: 1 / 1"><b>{html.escape(text)}</b>'
                '</div>', unsafe_allow_html=True)


def _buttons(job: JobView) -> None:
    # one row in a card a quarter of a desktop wide: Delete as an icon, named by its tooltip (with its word it
    # wrapped onto a line of its own in every card); a phone's half-screen card puts Reuse and Delete on a second
    with st.container(horizontal=True, gap="xsmall"):
        if st.button("Open", key=f"open-{job.id}", icon=":material/open_in_full:"):
            scroll.ask("job")  # the Create page would open at this card's depth: mid-form
            nav.open_job(job.id)
        if st.button("Reuse", key=f"reuse-{job.id}", icon=":material/tune:",
                     help="Open the Create page with this job's settings", disabled=not job.spec):
            job_actions.use_settings(job)
            scroll.ask("form")
            nav.open_job(job.id)
        offline = services.current_health().state == "offline"
        if st.button("", key=f"delete-{job.id}", icon=":material/delete:", disabled=offline,
                     help="Deleting needs the generator, which is offline" if offline else "Delete this job"):
            st.session_state["confirm_delete_job"] = job.id
            st.rerun()


def _confirm_delete(job: JobView) -> None:
    made = job.done_count  # the pictures that exist: a canceled job asked for 15 may have 3, or none
    question = f"Delete this job and its {made} picture{'' if made == 1 else 's'}?" if made else \
        "Delete this job? It has no pictures."
    st.markdown(f"**{question}** This cannot be undone.")
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


def _made(job: JobView) -> str:
    """' · Photo restyled': a restyle, a place and a generate job of one style share their prompt's words."""
    mode = job.spec.get("mode") or "generate"  # the backend's default: a spec without a mode drew everything
    if mode not in MADE:
        return ""
    return f' · <span class="sr-nowrap" title="{html.escape(placement.MODES[mode])}">{MADE[mode]}</span>'


def _when(job: JobView) -> str:
    created = parse_time(job.created_at)
    stamp = clock.shown(created) if created else "unknown time"
    # "· 12 s" for what a job took, "· canceled after 4 s" for one that never finished
    return f"{stamp} · {job.duration_words().removeprefix('took ')}" if job.terminal else stamp


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1].rstrip() + "…"
