"""A catalog run's pictures: one block per product, one row per style, each picture appearing the moment
its object lands in storage (a placeholder, a preview and its progress until then), a ZIP per product.

Like the Create page's job panel it is a fragment that reruns alone every POLL_S seconds while anything
moves, reading from storage only the jobs that are not finished (finished ones no longer change).
"""

import html
from collections.abc import Callable

import streamlit as st

from backend.storage import StorageError
from frontend import catalog_run, downloads, nav, services
from frontend.client import BackendError
from frontend.jobs import ImageView, JobView
from frontend.views import scroll
from frontend.views.job_panel import BADGES, tile

POLL_S = 2.0
VIEWS = "catalog_views"   # job id -> its last view, so finished jobs are not read again
STOPPED = "catalog_stopped"  # the jobs Stop canceled in this session: their pictures not made are offered again
Again = Callable[[list[catalog_run.Entry], list[str]], None]  # sends the entries; the ids it names leave the run
MIN_SLOTS, MAX_PER_ROW = 4, 6


def draw(ids: list[str], style_names: dict[str, str], packshots: dict[str, str], again: Again) -> None:
    """`style_names`: template id -> name; `packshots`: product name -> its packshot's key (where it has one);
    `again` sends the pictures a stop left unmade."""
    try:
        if services.storage() is None:
            st.error("STORAGE_URL is not set, so the pictures cannot be read: set it to the generator's storage.")
            return
    except StorageError as e:
        st.error(f"The pictures cannot be read: {e}")
        return
    polling = _moving(*_views(ids))
    scroll.draw_if_asked("catalog")  # a run just sent

    @st.fragment(run_every=POLL_S if polling else None)
    def live() -> None:
        _render(ids, style_names, packshots, polling, again)

    live()


def _views(ids: list[str]) -> tuple[dict[str, JobView | None], set[str]]:
    known = st.session_state.setdefault(VIEWS, {})
    views, unreadable = catalog_run.refresh(services.storage(), ids, known)
    known.update({i: v for i, v in views.items() if v is not None})
    return views, unreadable


def _moving(views: dict[str, JobView | None], unreadable: set[str]) -> bool:
    """Anything still to come: a job not finished, or one storage could not give just now."""
    return bool(unreadable) or any(v is not None and not v.terminal for v in views.values())


def _render(ids: list[str], style_names: dict[str, str], packshots: dict[str, str], polling: bool,
            again: Again) -> None:
    views, unreadable = _views(ids)
    if polling and not _moving(views, unreadable):
        st.rerun()  # the whole page once, so the grid is drawn again without its timer
    present = [v for v in views.values() if v is not None]
    _head(present, sum(v is None and i not in unreadable for i, v in views.items()))
    _not_made(present, style_names, again)
    if unreadable:
        st.warning(f"Storage is not answering for {len(unreadable)} of these jobs; trying again.",
                   icon=":material/sync_problem:")
    for n, (product, jobs) in enumerate(catalog_run.by_product(views).items()):
        _product(n, product, jobs, style_names, packshots.get(product))


def _head(views: list[JobView], missing: int) -> None:
    total = sum(len(v.images) for v in views)
    done = sum(v.done_count for v in views)
    failed = sum(img.status in ("failed", "canceled") for v in views for img in v.images)
    moving = [v for v in views if not v.terminal]
    with st.container(key="catalog-head"):
        info, action = st.columns([4, 1], vertical_alignment="center")
    not_made = f" · {failed} not made" if failed else ""
    info.markdown(f"##### Your catalog · {done} of {total} pictures ready{not_made}")
    if moving and action.button("Stop", key="catalog-stop", icon=":material/stop_circle:", width="stretch",
                                help="Pictures already made are kept; those being drawn now stop too, unfinished, "
                                     "and those waiting are not made"):
        _stop(moving)
    st.progress(done / total if total else 0.0)
    if missing:
        st.caption(f"{missing} job{'s' if missing != 1 else ''} of this run could not be found in storage "
                   "(deleted, or made with another storage).")


def _stop(views: list[JobView]) -> None:
    try:
        for view in views:
            services.client().cancel(view.id)
    except BackendError as e:
        st.error(f"Could not stop every job: {e.message}")
        return
    st.session_state[STOPPED] = [*st.session_state.get(STOPPED, []), *(v.id for v in views)]
    st.toast("Stopping: pictures already made are kept; the others are not made.")
    services.queue_changed()
    st.rerun(scope="app")  # the header's queue count too


def _not_made(views: list[JobView], style_names: dict[str, str], again: Again) -> None:
    """Once what Stop stopped has stopped: the pictures it left unmade, offered again once (a new job per style,
    the same settings). A stopped job that made none leaves the grid then; one that made some keeps them."""
    stopped = [v for v in views if v.id in st.session_state.get(STOPPED, ())]
    if not stopped or any(not v.terminal for v in stopped):
        return
    entries = catalog_run.not_made(stopped, services.product_triggers(), style_names)
    if not entries:
        st.session_state.pop(STOPPED, None)
        return
    count = sum(e.spec["num_images"] for e in entries)
    with st.container(horizontal=True, vertical_alignment="center", key="catalog-not-made"):
        st.caption(f"Stopped: {count} picture{'s were' if count != 1 else ' was'} not made.")
        if st.button(f"Make the {count} picture{'s' if count != 1 else ''} not made", key="catalog-again",
                     icon=":material/replay:", help="A new job for each style that was stopped, with the same "
                                                    "settings and new seeds"):
            st.session_state.pop(STOPPED, None)
            again(entries, [v.id for v in stopped if not v.done_count])


def _product(n: int, product: str, jobs: list[JobView], style_names: dict[str, str], packshot: str | None) -> None:
    done = sum(v.done_count for v in jobs)
    total = sum(len(v.images) for v in jobs)
    with st.container(border=True, key=f"catalog-product-{n}"):
        name, download = st.columns([3, 1], vertical_alignment="center")
        with name, st.container(horizontal=True, vertical_alignment="center", gap="small"):
            _packshot(packshot)
            st.markdown(f"**{html.escape(product or 'No product')}** "
                        f'<span class="sr-meta">· {done} of {total} ready</span>', unsafe_allow_html=True)
        store = services.storage()
        download.download_button(
            "Download ZIP", lambda: downloads.jobs_zip(store, catalog_run.zip_folders(jobs)),  # built on click only
            file_name=f"showroom-{product or 'pictures'}.zip", mime="application/zip", key=f"catalog-zip-{n}",
            icon=":material/folder_zip:", on_click="ignore", disabled=not done, width="stretch",
            help=f"Every finished picture of {product or 'these jobs'}, a folder per style")
        for view in jobs:
            _style_row(view, style_names)


def _packshot(key: str | None) -> None:
    """The product's own photo, small, so a shop owner recognises it at a glance; nothing when it has none."""
    if not key:
        return
    try:
        st.image(services.cutout_on_checkerboard(services.packshot(services.settings().storage_url, key)), width=48)
    except StorageError:
        pass


def _style_row(view: JobView, style_names: dict[str, str]) -> None:
    style = style_names.get(view.template or "", view.template or "Own prompt")
    per_row = min(max(len(view.images), MIN_SLOTS), MAX_PER_ROW)
    with st.container(key=f"catalog-row-{view.id}"):
        for start in range(0, len(view.images), per_row):
            label, *slots = st.columns([1.4] + [1] * per_row, vertical_alignment="top")
            if start == 0:  # on a phone: one line above the pictures, two a row (chrome.CSS)
                with label, st.container(key=f"catalog-label-{view.id}"):
                    _style_label(view, style)
            for slot, img in zip(slots, view.images[start:start + per_row]):
                with slot:
                    _picture(view, img)


def _style_label(view: JobView, style: str) -> None:
    text, color = BADGES.get(view.status, (view.status, "gray"))
    st.markdown(f"**{html.escape(style)}**")
    st.badge(f"{text} · {view.done_count}/{len(view.images)}", color=color)
    if view.status == "failed" and view.error:
        st.caption(view.error)
    if st.button("Open", key=f"catalog-open-{view.id}", icon=":material/open_in_full:", type="tertiary",
                 help="On the Create page: each picture full size, upscale, reuse its settings"):
        scroll.ask("job")  # the Create page would open at this grid's depth
        nav.open_job(view.id)


def _picture(view: JobView, img: ImageView) -> None:
    if not img.done:
        tile(view, img)
        return
    try:
        st.image(services.thumbnail(services.settings().storage_url, img.key), width="stretch")
    except StorageError:
        st.caption("Stored, but not readable just now")
