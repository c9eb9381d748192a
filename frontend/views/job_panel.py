"""One job's pictures, filled in as they land in storage.

The panel is a fragment that reruns alone every POLL_S seconds while the job (or an upscale) is
still moving: one GET of the manifest and one LIST of the job's folder per tick, never the backend.
Once everything is terminal the page reruns once, redefining the fragment without a timer.
"""

import base64
import html
import time

import streamlit as st

from backend.storage import ObjectMissing, StorageError
from frontend import downloads, reuse, services, speed
from frontend.client import BackendError
from frontend.jobs import ImageView, JobView, format_elapsed, is_job_id, load_job, ticket_view, upscale_key
from frontend.views import job_actions, scroll
from frontend.views.job_actions import asked_upscales, is_enlarging, request_upscale

POLL_S = 1.0
MISSING_REASON = "It was made, but it is no longer in storage"
UPSCALE_WAIT_S = 600  # how long a requested upscale keeps the panel polling before its manifest shows it
BADGES = {"queued": ("Queued", "gray"), "running": ("Generating", "blue"), "succeeded": ("Done", "green"),
          "failed": ("Failed", "red"), "canceled": ("Canceled", "gray")}
MISSING = ("Pictures missing", "orange")  # finished, but none of its pictures is in storage any more


def badge(view: JobView) -> tuple[str, str]:
    if view.terminal and not view.done_count and view.missing_count:
        return MISSING
    return BADGES.get(view.status, (view.status, "gray"))


def draw(job_id: str | None) -> None:
    _panel(job_id)
    scroll.draw_if_asked("job")  # also when the panel only says why there is no job: the request is used up


def _panel(job_id: str | None) -> None:
    st.markdown("##### Your pictures")
    if not job_id:
        st.markdown('<div class="sr-empty"><h3>Your pictures will appear here</h3>Pick a product and a style, '
                    'then press <b>Generate</b>. Each picture shows up the moment it is ready, and the page link '
                    'brings the job back on any device.</div>', unsafe_allow_html=True)
        return
    if not is_job_id(job_id):
        # The value is not echoed: a crafted link must not put its own text (or a link) in the page.
        st.warning("This link does not point to a job: its `job` value is not a job id.")
        return
    try:
        if services.storage() is None:
            st.error("STORAGE_URL is not set, so results cannot be read: set it to the backend's storage.")
            return
        first = _load(job_id)
    except StorageError:
        first = None
        polling = True  # storage may be back in a moment: the panel keeps trying, and says so
    else:
        if first is None:
            st.warning(f"No job {job_id} was found in storage. It may have been made with another storage, "
                       "or deleted.")
            return
        polling = _needs_polling(first)
    # Looked up once a full run, not every tick: with the generator off the products are read from storage.
    trigger = services.product_triggers().get(first.product) if first and first.product else None

    @st.fragment(run_every=POLL_S if polling else None)
    def live() -> None:
        _render(job_id, polling, trigger)

    live()


def _load(job_id: str) -> JobView | None:
    """The job as stored; before its manifest is first read, the ticket this session was given. Once read, the
    ticket is dropped: a manifest gone after that means the job was deleted, not that it is still coming."""
    tickets = st.session_state.get("tickets", {})
    view = load_job(services.storage(), job_id)
    if view is not None:
        tickets.pop(job_id, None)
    elif job_id in tickets:
        view = ticket_view(*tickets[job_id])
    return view


def _why_waiting(view: JobView) -> None:
    """A job no worker has taken yet says what it waits for, not only "Queued"."""
    health = services.current_health()
    if health.state in ("offline", "error"):
        return  # the header says why already
    if health.state == "loading":
        st.caption("Waiting for the generator to finish starting (it loads its model once).")
        return
    queue = (f" {health.pending} pictures are in the queue, this job's included."
             if health.pending > len(view.images) else "")
    # a training holds its GPU for minutes, and a job behind it was told of "earlier pictures" that were not there
    st.caption(f"Waiting for {health.waiting_for} to be free: earlier work is done first (pictures, or a product "
               f"it is learning).{queue}")


def _needs_polling(view: JobView) -> bool:
    asked = asked_upscales()
    waiting = any(time.time() - asked.get(f"{view.id}/{img.index}", 0) < UPSCALE_WAIT_S
                  and img.upscale_status is None and not img.upscaled for img in view.images)
    return view.needs_polling or waiting


def _render(job_id: str, polling: bool, trigger: str | None) -> None:
    try:
        view = _load(job_id)
    except StorageError as e:
        st.warning(f"Storage is not answering ({e}); retrying.")
        return
    if view is None:  # storage answers again, and has no such job: the page says so, without a timer
        st.rerun()
    if polling and not _needs_polling(view):
        st.rerun()  # the whole page once, so the fragment is drawn again without its timer
    _summary(view, trigger)
    per_row = 2 if len(view.images) <= 4 else 3
    with st.container(key="results-grid"):  # two pictures a row on a phone too (see chrome.CSS)
        for start in range(0, len(view.images), per_row):
            for column, img in zip(st.columns(per_row), view.images[start:start + per_row]):
                with column:
                    _image_card(view, img)


def _summary(view: JobView, trigger: str | None) -> None:
    label, color = badge(view)
    missing = f" · {view.missing_count} missing" if view.missing_count else ""
    with st.container(key="job-status"):  # what Generate scrolls to
        # Cancel beside the status while there is something to cancel; no column for it after (on a phone, the
        # stacked columns' empty one left a blank row under the status)
        info, actions = (st.container(), None) if view.terminal else st.columns([3, 1], vertical_alignment="center")
    with info, st.container(horizontal=True, vertical_alignment="center", gap="small"):
        st.badge(label, color=color)
        st.markdown(f'<span class="sr-meta" id="job-meta">{view.done_count} of {len(view.images)} ready{missing} · '
                    f'{view.duration_words()}{_gpu_time(view)}</span>',
                    unsafe_allow_html=True)
    if view.status == "queued":
        _why_waiting(view)
    if actions is not None and actions.button("Cancel", key="cancel-job", icon=":material/stop_circle:",
                                              width="stretch"):
        try:
            services.client().cancel(view.id)
        except BackendError as e:
            st.error(f"Could not cancel: {e.message}")
        else:
            st.toast("Canceling: pictures already made are kept.")
            services.queue_changed()
            st.rerun()  # the whole page, not this fragment alone: the header's queue count goes down with it
    st.markdown(f'<div class="sr-prompt sr-job-prompt">{html.escape(reuse.shown_prompt(view, trigger))}</div>',
                unsafe_allow_html=True)
    if view.status == "failed" and view.error:
        st.error(view.error)
    job_actions.bar(view)


def _gpu_time(view: JobView) -> str:
    """" · 8 s of GPU time, $0.0017" once the job is over: what it used of the box (a batch counts once), priced
    with GPU_HOUR_PRICE; nothing while it runs or when its images' times are not all known."""
    if not view.terminal or (seconds := speed.gpu_seconds(view)) is None:
        return ""
    device = "GPU" if services.current_health().gpus else "generator"
    money = speed.price(seconds, services.settings().gpu_hour_price)
    return f" · {format_elapsed(seconds) if seconds >= 1 else 'under 1 s'} of {device} time" + (
        f", {money}" if money else "")


def _image_card(view: JobView, img: ImageView) -> None:
    with st.container(border=True, key=f"result-{img.index}"):
        if not img.done:
            tile(view, img)
            st.caption(f"#{img.index + 1}" + (f" · seed {img.seed}" if img.seed is not None else ""))
            return
        url = services.settings().storage_url
        try:
            data = services.image_bytes(url, img.key)
            if img.upscaled:
                st.image(services.thumbnail(url, upscale_key(img.key), 1024), width="stretch")
                st.caption(f"#{img.index + 1} · seed {img.seed} · upscaled 4x")
            else:
                st.image(data, width="stretch")
                st.caption(f"#{img.index + 1} · seed {img.seed}")
            _image_actions(view, img, url, data)
        except ObjectMissing:  # deleted since the folder was listed
            _slot(view, "missing", "Missing", MISSING_REASON)
        except StorageError:
            _slot(view, "unread", "Not loaded", "Storage did not answer just now: reload the page to try again")


def tile(view: JobView, img: ImageView) -> None:
    """A picture that is not ready: its preview while it sharpens (else a placeholder), and how far it is."""
    if img.missing:
        _slot(view, "missing", img.label, MISSING_REASON)
        return
    _slot(view, img.status, img.label, img.error, _preview(img))
    if img.status == "running" and img.progress:
        step, steps = img.progress
        seen = st.session_state.setdefault("steps_seen", {})  # where this page started measuring each picture
        since = seen.setdefault(f"{view.id}/{img.index}", (step, view.updated_at))
        eta = img.eta_s(since=since, updated_at=view.updated_at)
        left = "" if eta is None else " · almost done" if eta < 1 else f" · about {format_elapsed(eta)} left"
        st.progress(min(1.0, step / steps), text=f"Step {step} of {steps}{left}")


def _preview(img: ImageView) -> bytes | None:
    if not img.preview_key or img.status != "running":
        return None
    try:  # rewritten as it sharpens: read fresh on every tick, never cached
        return services.storage().get(img.preview_key)
    except StorageError:
        return None


def _slot(view: JobView, status: str, label: str, reason: str | None = None, preview: bytes | None = None) -> None:
    """The tile of a picture not shown yet. A preview (a small JPEG) is drawn inside it, inline: it is not
    the picture, and it is gone once the PNG lands."""
    small = f"<small>{html.escape(reason)}</small>" if reason else ""
    source = f"data:image/jpeg;base64,{base64.b64encode(preview).decode()}" if preview else ""
    behind = f'<img class="sr-preview" alt="preview" src="{source}">' if preview else ""
    st.markdown(f'<div class="sr-slot sr-slot-{status}{" sr-slot-preview" if preview else ""}" style="aspect-ratio: '
                f'{view.width} / {view.height}">{behind}<b>{html.escape(label)}</b>{small}</div>',
                unsafe_allow_html=True)


def _image_actions(view: JobView, img: ImageView, url: str, data: bytes) -> None:
    name = downloads.file_stem(view, img.index)
    moving = is_enlarging(view, img)
    # Upscaling that can only fail is said once, under the job's buttons (job_actions.bar): Download has the row
    offered = img.upscaled or moving or services.current_health().upscale_refusal is None
    with st.container(key=f"image-actions-{img.index}"):  # stacked on a phone (chrome.CSS)
        left, right = st.columns(2) if offered else (st.container(), None)
    left.download_button("Download", data, file_name=f"{name}.png", mime="image/png", key=f"dl-{img.index}",
                         icon=":material/download:", width="stretch", on_click="ignore")
    if img.upscaled:
        right.download_button("4x PNG", services.image_bytes(url, upscale_key(img.key)),
                              file_name=f"{name}-x4.png", mime="image/png", key=f"dl4-{img.index}",
                              icon=":material/download:", width="stretch", on_click="ignore")
    elif img.upscale_status == "queued":
        right.button("Upscale queued…", key=f"up-{img.index}", disabled=True, width="stretch",
                     help="Waiting its turn; it starts before any image queued after it.")
    elif moving:
        right.button("Upscaling…", key=f"up-{img.index}", disabled=True, width="stretch")
    elif offered and right.button("Upscale 4x", key=f"up-{img.index}", icon=":material/zoom_out_map:",
                                  width="stretch") and request_upscale(view.id, img.index):
        st.rerun()  # the whole page, so the panel polls until the upscale lands
    if img.upscale_status == "failed":  # one line under the picture; the upscaler's own words for whoever runs it
        st.caption(":orange[:material/error: Not enlarged this time.] Upscale 4x tries again.",
                   help=f"The upscaler said: {img.upscale_error or 'nothing'}")
    message = st.session_state.get("upscale_errors", {}).get(f"{view.id}/{img.index}")
    if message and img.upscale_status is None:
        st.warning(f"Cannot upscale: {message}")


