"""What can be done with a whole job: download it as a ZIP, upscale every picture, reuse its settings on the
Create page, or make more like it with a new seed."""

import hashlib
import time
import uuid

import streamlit as st

from backend.storage import StorageError
from frontend import downloads, placement, reuse, services, uploads
from frontend.client import BackendError
from frontend.jobs import JobView
from frontend.views import scroll

PENDING = "compose_pending"   # values for the Create page's widgets, applied before they are drawn
NOTE = "compose_note"         # what the page says about them once applied
PICTURE = "reuse_png"         # the Create page's "Reuse a picture's settings" upload
PICTURE_REFUSAL = "reuse_png_refusal"  # why that picture's settings could not be read, in words
PHOTO = "reused_photo"        # the stored photo of the job reused: the form's photo until another is chosen


def bar(view: JobView) -> None:
    """The job's buttons, in one row that wraps on a narrow screen."""
    health = services.current_health()
    refusal = health.upscale_refusal
    with st.container(horizontal=True, gap="small", key="job-actions"):
        if view.done_count:
            store = services.storage()
            st.download_button("Download all", lambda: downloads.job_zip(store, view),  # built on click only
                               file_name=f"{downloads.job_stem(view)}.zip", mime="application/zip", key="job-zip",
                               icon=":material/folder_zip:", on_click="ignore",
                               help="Every finished picture (with its settings inside the file) and the job's record")
            waiting = [img for img in view.images if img.done and not img.upscaled and not img.upscaling]
            if waiting and refusal is None and st.button("Upscale all", key="job-upscale-all",
                                                         icon=":material/zoom_out_map:",
                                                         help="Every picture, 4x larger"):
                _upscale_all(view, [img.index for img in waiting])
        if view.spec:
            if st.button("Use these settings", key="job-reuse", icon=":material/tune:",
                         help="Fill the form with this job's product, style, prompt, size, steps and seed"):
                use_settings(view)
                scroll.ask("form")  # on a phone the form is under the pictures
                st.rerun(scope="app")  # the form is outside this fragment
            if st.button("More like this", key="job-vary", icon=":material/autorenew:",
                         disabled=not health.can_generate, help="The same settings again, with a new seed"):
                _more_like_this(view)
    if view.done_count and refusal:
        # once for the job, instead of an Upscale button per picture that could only be greyed out
        st.caption(f"{refusal}.", help=health.upscale_howto)
    if enlarging := enlarging_count(view):  # after Upscale all, the job said nothing of the pictures it sent
        done = sum(img.upscaled for img in view.images)
        so_far = f" ({done} done)" if done else ""
        st.caption(f":material/zoom_out_map: Enlarging {enlarging} picture{'s' * (enlarging > 1)} 4x{so_far}: "
                   "each gets its 4x PNG button when it is ready.")


def use_settings(view: JobView) -> None:
    """The Create page's widgets take the job's values on the next run of the app, and its photo, where it was
    made from one, becomes the form's photo (read back from storage, as More like this sends it)."""
    native = services.current_health().native_size
    st.session_state[PENDING] = reuse.compose_values(view, _trigger(view.spec.get("product")), native)
    st.session_state.pop(PHOTO, None)
    photo = ""
    if view.input_key:
        data = _stored_photo(view.input_key)
        if data is None:
            photo = " It was made from a photo you uploaded: upload it again to use it."
        else:
            _keep_photo(f"{downloads.job_stem(view)}-photo.png", data, native)
            photo = " Its photo is back in the form too: upload another to use that one instead."
    st.session_state[NOTE] = ("The form holds the settings of the job you opened: change what you like, then press "
                              "Generate.") + photo


def _stored_photo(key: str) -> bytes | None:
    """The job's stored photo, or None where it cannot be sent again: the job deleted, storage unreadable, or the
    photo bigger as a PNG than the backend takes (a large JPEG grows when stored losslessly)."""
    try:
        store = services.storage()
        data = store.get(key) if store is not None else None
    except (StorageError, ValueError):  # ValueError: a manifest's key that is not a storage key
        return None
    return data if data and len(data) <= uploads.PHOTO_BYTES else None


def _keep_photo(name: str, data: bytes, native: int) -> None:
    from frontend.views.photo import PHOTO_SHAPE  # not at the top: photo.py draws reused_photo below

    # As if the photo had just been chosen, less the new shape it would give the picture: the job's size is kept.
    size = placement.photo_canvas(data, native) or (None, None)
    st.session_state[PHOTO_SHAPE] = (hashlib.sha256(data).hexdigest(), *size)
    st.session_state[PHOTO] = {"upload": (name, data, "image/png")}


def reused_photo(upload: tuple[str, bytes, str] | None) -> tuple[str, bytes, str] | None:
    """The Create form's photo (photo.section): a file chosen after Reuse replaces the reused job's photo; until
    then that photo is sent, named under the upload box with a way to leave it out. A file the box already held
    when Reuse was pressed (Streamlit cannot empty the box) does not count as chosen."""
    kept = st.session_state.get(PHOTO)
    if kept is None:
        return upload
    chosen = hashlib.sha256(upload[1]).hexdigest() if upload else None
    kept.setdefault("instead_of", chosen)  # the first run after Reuse
    if chosen not in (None, kept["instead_of"]):
        st.session_state.pop(PHOTO)
        return upload
    name = kept["upload"][0]
    with st.container(horizontal=True, gap="small", vertical_alignment="center", key="reused-photo"):
        instead = f", is sent, not {upload[0]}" if upload else ""
        st.caption(f":material/photo: Photo: **{name}**, from the job you reused{instead}. "
                   "Upload another to replace it.")
        st.button("Remove", key="reused-photo-remove", icon=":material/close:", on_click=_leave_photo_out,
                  help="Leave the reused job's photo out of the form")
    return kept["upload"]


def _leave_photo_out() -> None:
    st.session_state.pop(PHOTO, None)


def use_picture() -> None:
    """The upload's on_change: runs before the page is drawn, so apply_pending fills the form in the same run."""
    st.session_state.pop(PICTURE_REFUSAL, None)
    upload = st.session_state.get(PICTURE)
    st.session_state.pop(PHOTO, None)  # another job's settings: the photo of one reused before is not theirs
    if upload is None:
        return
    spec, reason = reuse.png_settings(upload.getvalue())
    if spec is None:
        st.session_state[PICTURE_REFUSAL] = reason
        return
    st.session_state[PENDING] = reuse.form_values(spec, _trigger(spec.get("product")),
                                                  services.current_health().native_size)
    photo = {"restyle": " It restyled a photo: upload that photo again to use it.",
             "place": " It placed a product photo: upload it again, or leave it out to place the product's cut-out."}
    st.session_state[NOTE] = f"The form holds the settings of {upload.name}." + photo.get(spec.get("mode"), "")


def apply_pending() -> None:
    """Called by the entry point before any widget is drawn (a widget's value cannot change after)."""
    values = st.session_state.pop(PENDING, None)
    if values:
        st.session_state.update(values)


def _trigger(product: str | None) -> str | None:
    return services.product_triggers().get(product) if product else None


def _more_like_this(view: JobView) -> None:
    spec = reuse.variation(view, _trigger(view.spec.get("product")))
    try:
        photo = ("input.png", services.storage().get(view.input_key), "image/png") if view.input_key else None
        ticket = services.client().submit(spec, photo, idempotency_key=uuid.uuid4().hex)
    except (BackendError, StorageError) as e:
        st.error(f"No new job was started: {getattr(e, 'message', e)}")
        return
    remember_ticket(ticket, spec)
    services.history.clear()
    services.queue_changed()
    st.session_state["open_job"] = st.query_params["job"] = ticket["id"]
    st.rerun(scope="app")  # the whole page: the panel follows the new job


def _upscale_all(view: JobView, indices: list[int]) -> None:
    for index in indices:
        if not request_upscale(view.id, index):
            break  # the reason is under the picture; the others would only fail the same way
    st.rerun(scope="app")  # the whole page, so the panel polls until the upscales land


def is_enlarging(view: JobView, img) -> bool:
    """Being upscaled now, or asked for by this session and not yet in the manifest."""
    asked = img.upscale_status is None and f"{view.id}/{img.index}" in asked_upscales()
    return not img.upscaled and (img.upscaling or asked)


def enlarging_count(view: JobView) -> int:
    return sum(is_enlarging(view, img) for img in view.images)


def remember_ticket(ticket: dict, spec: dict) -> None:
    """Placeholders for the moment between the 202 and the first manifest read."""
    st.session_state.setdefault("tickets", {})[ticket["id"]] = (ticket, spec)


def asked_upscales() -> dict:
    """"<job>/<index>" -> when this session asked for its upscale."""
    return st.session_state.setdefault("upscales_asked", {})


def request_upscale(job_id: str, index: int) -> bool:
    """Ask for one upscale; a refusal is kept to be drawn under the picture. True when it was accepted."""
    errors = st.session_state.setdefault("upscale_errors", {})
    try:
        services.client().upscale(job_id, index)
    except BackendError as e:
        errors[f"{job_id}/{index}"] = e.message
        return False
    errors.pop(f"{job_id}/{index}", None)
    asked_upscales()[f"{job_id}/{index}"] = time.time()
    return True
