"""One product, open beside the list: its cut-out picture, teaching Showroom the product from its photos
(a progress bar fed by the training's manifest in storage, so a reload finds it again), and once it has
learnt, a check: four pictures in the studio style beside the cut-out, and its LoRA to take to other tools."""

import html

import streamlit as st

from backend.contract import TRAINING_PHOTOS
from backend.storage import ObjectMissing, StorageError
from frontend import downloads, nav, services, uploads
from frontend.client import BackendError
from frontend.jobs import format_elapsed
from frontend.trainings import TEACH_STEPS, TrainingView, estimate_minutes, found_words, measured_minutes
from frontend.views import product_check, scroll
from frontend.views.product_form import PHOTO_SUFFIXES, TEACH_PHOTOS

POLL_S = 1.0
TRAININGS = "trainings"   # product name -> the training this session started (until the catalog says so)


def what_it_can_do(product: dict) -> str:
    if product.get("has_lora"):
        return "Learnt: Showroom draws it in any scene" + (
            ", and places its picture as it is" if product.get("packshot_key") else "")
    if product.get("packshot_key"):
        return "Ready to place exactly as it is · not learnt yet"
    return "Not ready: add a photo of it, or teach Showroom from photos"


def draw(product: dict) -> None:
    name = product["name"]
    head, back = st.columns([3, 2], vertical_alignment="center")
    head.markdown(f"#### {html.escape(name)}")
    if back.button("Add another product", key="add-another", icon=":material/add:", width="stretch"):
        nav.focus_product(None)
        scroll.ask("product-form")  # on a phone the form is after the list
        st.rerun()
    with st.container(key="product-summary"):  # on a phone, the picture stays beside the words (chrome.CSS)
        picture, words = st.columns(2, vertical_alignment="center")
    with picture:
        _packshot(product)
    words.markdown(f"{what_it_can_do(product)}.")
    words.caption(f"In a prompt, `<product>` stands for it (its words: “{product.get('trigger', '')}”).",
                  help="These are its trigger words: what a prompt says to call the product up.")
    if product.get("has_lora") or product.get("packshot_key"):
        if words.button("Make pictures with it", key="make-pictures", type="primary", icon=":material/auto_awesome:"):
            _make_pictures(product)
    if product.get("has_lora"):
        with words:
            _download_lora(product)
    training = _teaching(product)
    if product.get("has_lora"):
        product_check.draw(product, packshot_bytes(product), _learnt_check(training))


def _learnt_check(training: TrainingView | None) -> str | None:
    """The test pictures of the LoRA the product has: its latest training's once that succeeded, else (while it
    learns again, or after that failed or was stopped) those of the LoRA it keeps."""
    if training is None:
        return None
    return training.check_job if training.status == "succeeded" else training.earlier_check_job


def _make_pictures(product: dict) -> None:
    """The Create page with this product chosen: drawn in any scene once learnt, else its photo placed as it is."""
    st.session_state["product"] = product["name"]
    st.session_state["mode"] = "generate" if product.get("has_lora") else "place"
    scroll.ask("form")  # a job this session opened is shown too (on a phone, above the form)
    st.switch_page(nav.page("create"))


def _download_lora(product: dict) -> None:
    """Its LoRA for AUTOMATIC1111, Forge and ComfyUI: the stored file in kohya's layout, written on the click."""
    try:
        store = services.storage()
    except StorageError:
        store = None
    if store is None:  # no store to read it from: the page says so where it matters
        return
    name, trigger = product["name"], product.get("trigger") or ""
    try:
        refusal = services.kohya_refusal(name)
    except ObjectMissing:
        refusal = "No LoRA download: its file is not in storage."
    except StorageError:
        refusal = None  # storage may answer again by the click, which says why if it does not
    if refusal:
        st.caption(refusal)  # instead of a button whose click can only fail
        return
    health = services.current_health()
    sdxl = health.native_size >= 1024 if health.state != "offline" else None  # used only where the file cannot tell
    st.download_button("Download LoRA", lambda: downloads.kohya_lora(store, name, sdxl, trigger),  # built on click only
                       file_name=f"{name}.safetensors", mime="application/octet-stream", key="download-lora",
                       icon=":material/download:", on_click="ignore",
                       help=f"For AUTOMATIC1111, Forge and ComfyUI (kohya's layout; the same base model as here): "
                            f"prompt with its trigger words “{trigger}”, in AUTOMATIC1111 and Forge as "
                            f"`<lora:{name}:1> {trigger}`.")


def packshot_bytes(product: dict) -> bytes | None:
    key = product.get("packshot_key")
    if not key:
        return None
    try:
        return services.packshot(services.settings().storage_url, key)
    except StorageError:
        return None


def _packshot(product: dict) -> None:
    shot = packshot_bytes(product)
    if shot is None:
        if not made_with_it(product, 320):  # as its card in the list shows
            st.markdown('<div class="sr-thumb-empty">No picture yet</div>', unsafe_allow_html=True)
        return
    st.image(services.cutout_on_checkerboard(shot), caption="Its cut-out: placed exactly as it is", width="stretch")


def made_with_it(product: dict, side: int) -> bool:
    """The newest picture made with a product that has no cut-out (one added from a LoRA), drawn; False when there
    is none (or storage cannot say), for the caller's empty tile."""
    url = services.settings().storage_url
    try:
        made = services.pictures_by_product(url).get(product["name"]) if url else None
        if made:
            st.image(services.thumbnail(url, made, side), caption="Made with it", width="stretch")
            return True
    except StorageError:
        pass
    return False


def _teaching(product: dict) -> TrainingView | None:
    """Its latest training: a bar while it runs, then what came of it, and the form to teach it (again)."""
    name = product["name"]
    training_id = st.session_state.get(TRAININGS, {}).get(name) or product.get("training")
    try:
        training = services.training(training_id) if training_id else None
    except StorageError as e:
        st.warning(f"How far Showroom has got cannot be read right now: {e}")
        return None
    if training is not None and not training.terminal:
        _progress(training.id)
        return training
    if training is not None and training.status == "succeeded" and not product.get("has_lora") \
            and training.id not in st.session_state.setdefault("trainings_refreshed", set()):
        st.session_state["trainings_refreshed"].add(training.id)  # once: the record is written before the manifest
        services.catalog.clear()  # a catalog read before the training ended: read it again
        st.rerun()
    if training is not None and training.status == "succeeded" and product.get("has_lora"):
        below = " Below: four test pictures drawn from what it learnt." if training.check_job else ""
        st.success(f"Showroom has learnt {name}: choose it on the Create page and it appears in any scene.{below}",
                   icon=":material/school:")
        if found := found_words(training.product_found):
            st.caption(found)
    elif training is not None and training.status == "canceled":
        st.info("You stopped the learning: the product is as it was. Teach it again below when you are ready.",
                icon=":material/stop_circle:")
    elif training is not None and training.status != "succeeded":
        st.error(f"Learning stopped: {training.error or training.label}. The product is as it was; try again below.")
    if product.get("has_lora"):
        # a LoRA uploaded (made elsewhere) was never taught here: not "again"
        again = "Teach it again, from other photos" if training is not None else "Teach it from your own photos instead"
        with st.expander(again):
            _teach_form(product)
    else:
        st.markdown("##### Teach Showroom this product")
        st.caption("So far it can only be placed as it is. Taught from your photos, Showroom can draw it in any "
                   "scene, from any angle.")
        _teach_form(product)
    return training


def _teach_form(product: dict) -> None:
    name = product["name"]
    added = _added_photos(name)  # kept in storage: there after a reload, on another day, on another device
    kept = [] if added else st.session_state.get(TEACH_PHOTOS, {}).get(name) or []
    dropped = st.file_uploader("Photos to learn from", key="teach_upload", accept_multiple_files=True,
                               max_upload_size=uploads.photo_mb(),
                               help="2 to 40 photos of the product, from different angles and in different light.")
    photos = [(p.name, p.getvalue(), p.type or "application/octet-stream") for p in dropped or []] or kept
    with_added = bool(added) and (not dropped or st.checkbox(
        f"Add them to the {_count(len(added))} you added it with", key="teach_with_added",
        help="Unticked, only the photos dropped above are learnt from."))
    if added and not dropped:
        st.caption(f"Learns from the {_count(len(added))} you added it with: drop more above to add to them, or "
                   "others to use instead.")
        st.image([thumb for _, thumb in added], width=56)
    elif kept and not dropped:
        st.caption(f"The {_count(len(kept))} you added it with will be used; drop others above to use those instead.")
    with st.expander("Advanced"):
        steps = st.number_input("Learning steps", 10, 5000, TEACH_STEPS, step=50, key="teach_steps",
                                help="More steps learn more detail and take longer; the rank and the picture size "
                                     "are chosen by the generator.")
    health = services.current_health()
    where = "on this GPU" if health.gpus else "on the generator's processor"  # which may not be the owner's computer
    try:
        learnt = services.latest_trainings(services.product_records())
    except StorageError:
        learnt = []
    minutes = measured_minutes(int(steps), learnt, health.devices, health.native_size)
    measured = minutes is not None
    if not measured:
        minutes = estimate_minutes(int(steps), health.devices, health.native_size)
    # The time beside the button, not in it: a label that long was cut off on a wide screen.
    st.caption(f"Takes about {minutes} minute{'s' if minutes != 1 else ''} {where}"
               + (", at the speed it learnt your last product." if measured else "."))
    short = _photos_short(len(photos) + (len(added) if with_added else 0))
    if short:  # said before the click (a product added from one photo, or before photos were kept, has none)
        st.caption(short)
    clicked = st.button("Teach Showroom this product", key="teach", type="primary", icon=":material/school:",
                        disabled=not health.can_generate or bool(short),
                        help="Showroom studies the photos and learns the product under its words (it trains a LoRA "
                             "for the generator's model). The time is measured on the last product it learnt here, "
                             "or before the first, estimated from the number of steps and the kind of processor; "
                             "the bar shows the real progress.")
    if clicked:
        try:  # read on the click only: up to 40 full-size photos are not kept in the page between reruns
            photos = photos + [(key.rsplit("/", 1)[-1], services.storage().get(key), "image/png")
                               for key, _ in (added if with_added else [])]
        except StorageError as e:
            st.error(f"The photos you added it with cannot be read right now ({e}): drop them above instead.")
            return
        _teach(name, photos, int(steps))


def _count(n: int) -> str:
    return f"{n} photo{'s' if n != 1 else ''}"


def _added_photos(name: str) -> list[tuple[str, bytes]]:
    """The photos the product was added with, kept in storage (key and thumbnail); none when storage cannot say."""
    url = services.settings().storage_url
    if not url:
        return []
    try:
        return services.added_photos(url, name)
    except (StorageError, OSError):  # OSError: a kept photo Pillow cannot read back; teaching asks for others
        return []


def _photos_short(count: int) -> str | None:
    """Why `count` photos cannot teach it, or None when they can."""
    fewest, most = TRAINING_PHOTOS
    if count == 0:
        return f"Drop {fewest} to {most} photos of it above to teach it."
    if count < fewest:
        return f"One photo is not enough to learn it from: add at least {fewest - count} more, from other angles."
    if count > most:
        return f"At most {most} photos are learnt from: remove {count - most}."
    return None


def _teach(name: str, photos: list[tuple[str, bytes, str]], steps: int) -> None:
    odd = next((p[0] for p in photos if not p[0].lower().endswith(PHOTO_SUFFIXES)), None)
    if odd:
        st.error(f"“{odd}” is not a photo Showroom can read: use PNG, JPEG or WebP files.")
        return
    try:
        ticket = services.client().train(name, photos, steps)
    except BackendError as e:
        st.error(f"**Showroom could not start learning.** {e.message[:1].upper()}{e.message[1:]}.",
                 icon=":material/error:")
        return
    st.session_state.setdefault(TRAININGS, {})[name] = ticket["id"]
    services.catalog.clear()  # the product's `training` changed
    # The teaching form (photos, Advanced) is taller than the bar that replaces it: a page scrolled down to the
    # button was left showing the list beside an empty column, the bar above the screen.
    scroll.ask("product")
    st.rerun()


def _progress(training_id: str) -> None:
    @st.fragment(run_every=POLL_S)
    def live() -> None:
        try:
            training = services.training(training_id)
        except StorageError as e:
            st.warning(f"Storage is not answering ({e}); retrying.")
            return
        if training is None or training.terminal:
            services.catalog.clear()  # has_lora changed with it
            st.rerun()
        _bar(training)

    live()


def _bar(training: TrainingView) -> None:
    seen = st.session_state.setdefault("training_seen", {})
    if training.status == "running" and training.step > 0:
        seen.setdefault(training.id, (training.step, training.updated_at))  # where this page started measuring
    since = seen.get(training.id)
    eta = training.eta_s(since if since and since[0] < training.step else None)
    if training.status == "queued":
        waiting = f"Waiting for {services.current_health().waiting_for} to be free"
        text = waiting + (f" · {training.error}" if training.error else "")
    else:
        left = f" · about {format_elapsed(eta)} left" if eta is not None else ""
        text = f"Learning: step {training.step} of {training.steps}{left}"
    st.progress(training.fraction, text=text)
    if training.loss is not None:
        st.caption(f"Loss {training.loss:.4f}: how far its drawings still are from your photos (lower is better; "
                   "it wobbles).")
    st.caption("You can leave this page: learning goes on, and the bar is back when you return.")
    if st.button("Stop learning", key="stop-training", icon=":material/stop_circle:",
                 help="Wrong photos, or too many steps? Stops it now; the product stays as it was."):
        _stop(training.id)


def _stop(training_id: str) -> None:
    try:
        services.client().cancel_training(training_id)
    except BackendError as e:
        st.error(f"The learning could not be stopped: {e.message}")
        return
    services.catalog.clear()
    services.training_glance.clear()  # its card in the list says it no longer learns
    st.rerun()
