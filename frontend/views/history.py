"""History: the newest jobs, read from storage (so it works with the generator off), each one openable."""

import html

import streamlit as st

from backend.storage import StorageError
from frontend import nav, services
from frontend.jobs import JobView, format_elapsed, parse_time
from frontend.views.job_panel import BADGES

LIMIT = 24
PER_ROW = 4


def draw() -> None:
    st.markdown("#### Recent jobs")
    url = services.settings().storage_url
    if not url:
        st.error("STORAGE_URL is not set, so there is no history to show: set it to the backend's storage.")
        return
    try:
        jobs = services.history(url, LIMIT)
    except StorageError as e:
        st.error(f"The results store cannot be read right now: {e}")
        return
    if not jobs:
        st.markdown('<div class="sr-empty"><h3>No pictures yet</h3>Jobs you start on the Create page '
                    'are kept here, with their pictures.</div>', unsafe_allow_html=True)
        st.page_link(nav.page("create"), label="Create your first pictures", icon=":material/auto_awesome:")
        return
    st.caption(f"The {len(jobs)} newest jobs, newest first. Open one to see every picture, download or upscale.")
    for start in range(0, len(jobs), PER_ROW):
        for column, job in zip(st.columns(PER_ROW), jobs[start:start + PER_ROW]):
            with column:
                _card(url, job)


def _card(url: str, job: JobView) -> None:
    with st.container(border=True, key=f"job-{job.id}"):
        cover = next((img for img in job.images if img.done), None)
        if cover is not None:
            try:
                st.image(services.thumbnail(url, cover.key), width="stretch")
            except StorageError:
                cover = None
        if cover is None:
            label = BADGES.get(job.status, (job.status, "gray"))[0]
            st.markdown(f'<div class="sr-slot sr-slot-{job.status}" style="aspect-ratio: 1 / 1">'
                        f'<b>{label}</b></div>', unsafe_allow_html=True)
        label, color = BADGES.get(job.status, (job.status, "gray"))
        st.badge(label, color=color)
        st.markdown(f'<div class="sr-prompt">{html.escape(_shorten(job.prompt, 90))}</div>',
                    unsafe_allow_html=True)
        st.markdown(f'<span class="sr-meta">{_when(job)} · {job.done_count}/{len(job.images)} pictures'
                    f'{" · " + html.escape(job.product) if job.product else ""}</span>', unsafe_allow_html=True)
        if st.button("Open", key=f"open-{job.id}", width="stretch", icon=":material/open_in_full:"):
            nav.open_job(job.id)


def _when(job: JobView) -> str:
    created = parse_time(job.created_at)
    stamp = created.strftime("%d %b %H:%M UTC") if created else "unknown time"
    return f"{stamp} · {format_elapsed(job.elapsed_s())}" if job.terminal else stamp


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1].rstrip() + "…"
