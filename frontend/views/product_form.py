"""Add a product: a name and a few photos (the first becomes its cut-out picture), or a LoRA already made.

Plain words on the form; the technical names (trigger words, LoRA) live in the help texts. A refused
upload keeps everything typed and says why in words. The name is taken as typed and saved in the backend's
form (shown under the field); a name that is a product's already is said before anything is sent, and replaced
only when the user ticks Replace.
"""

import re
import unicodedata
from pathlib import PurePath

import streamlit as st

from backend.contract import NAME_RE, TRAINING_PHOTOS
from backend.lora.safetensors_file import LoraFormatError, read_safetensors_header
from frontend import nav, services, uploads
from frontend.client import BackendError
from frontend.trainings import lora_trigger, suggest_trigger
from frontend.views import chrome, scroll

PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
# product name -> the photos it was added with in this session: what teaches it when storage keeps none of them
TEACH_PHOTOS = "photos_to_teach"


def draw() -> None:
    st.markdown("#### Add a product")
    offline = not services.current_health().can_generate
    if offline:
        st.info("Adding a product needs the generator, which is not available right now.")
    with st.container(border=True):
        typed, existing, replace = _name_field(offline)
        with st.form("add-product", clear_on_submit=False, border=False):  # a refused upload keeps what was typed
            submitted, kind, trigger, photos, lora, weight = _fields(offline or bool(existing and not replace))
    if submitted:
        with st.container(key="add-refused"):  # an accepted product reruns the page; only a refusal stays here
            _add(typed, kind.strip() or None, trigger.strip(), photos or [], lora, weight,
                 replacing=existing["name"] if existing and replace else None)
        # Under the form: with an expander open it landed below the screen, and the click seemed to do nothing.
        scroll.ask("add-refused")
        scroll.draw_if_asked("add-refused")


def _name_field(offline: bool) -> tuple[str, dict | None, bool]:
    """Outside the form, so that what it is saved as, and a product that has it already, are said as it is
    typed: what was typed, the product that has its name, whether the user ticked Replace."""
    typed = st.text_input("Name", key="add_name", placeholder="e.g. Red bottle",
                          help="Type it as you like: it is saved in small letters and digits, with '-' between "
                               "words (shown below). It is how you pick the product later.")
    name = stored_name(typed)
    existing = None if offline or not name else _existing(name, _products())
    # Always there, empty or not: what it holds appears once a name is typed, and an element put before the form
    # moved it in the page, so the browser drew the form anew and dropped the photos just chosen in it.
    with st.container(key="add-name-said"):
        return typed, existing, _name_said(typed, name, existing)


def _fields(disabled: bool) -> tuple:
    """The form's other fields and its button: (submitted, kind, trigger, photos, lora, weight)."""
    kind = st.text_input("What is it? (optional)", key="add_kind", placeholder="e.g. mug",
                         help="One or two words: they help Showroom draw the product and sort your list.")
    photos = st.file_uploader("Photos of the product (drag several)", key="add_photos", accept_multiple_files=True,
                              max_upload_size=uploads.photo_mb(),
                              help="Drag several at once: PNG, JPEG or WebP. The first is cut out and becomes "
                                   "the product's picture, placed exactly as it is; all of them can teach "
                                   "Showroom the product (2 to 40 photos, from different angles, work best).")
    with st.expander("Advanced"):
        trigger = st.text_input("Words that call it up in a prompt", key="add_trigger",
                                placeholder="chosen for you: a rare word plus what it is, e.g. zwx mug",
                                help="Its trigger words: they replace <product> in a prompt, and Showroom "
                                     "learns the product under them. Leave empty to have them chosen (with a "
                                     "LoRA: read from its file, where it names them).")
    with st.expander("I already have a LoRA"):
        lora = st.file_uploader("LoRA file (.safetensors)", key="add_lora", max_upload_size=uploads.lora_mb(),
                                help="A LoRA trained on this product for the generator's model. Its trigger "
                                     "words are read from the file where it names them; else type them under "
                                     "Advanced.")
        weight = st.slider("How strongly it applies", 0.0, 2.0, 1.0, step=0.05, key="add_weight",
                           help="The LoRA's weight: 1 as trained; lower if it overpowers the scene.")
    submitted = st.form_submit_button("Add product", type="primary", icon=":material/add:", key="add-submit",
                                      disabled=disabled)
    return submitted, kind, trigger, photos, lora, weight


def _name_said(typed: str, name: str, existing: dict | None) -> bool:
    """Under the name: what it is saved as, or why it cannot be one; a product that has it already, with Open and
    Replace. Whether the user ticked Replace."""
    if not typed.strip():
        return False
    if not name:
        st.caption(f":red[{_NO_NAME}]")
        return False
    st.caption(f"Saved as **{name}**")
    if existing is None:
        return False
    st.warning(_exists_words(existing), icon=":material/warning:")
    with st.container(horizontal=True, gap="small"):
        if st.button(f"Open {existing['name']}", key="add-open-existing", icon=":material/open_in_full:"):
            nav.focus_product(existing["name"])
            scroll.ask("product")
            st.rerun()
        # keyed by the name: a tick given to one product never carries over to another
        return st.checkbox(f"Replace {existing['name']}", key=f"add_replace-{existing['name']}")


def _exists_words(existing: dict) -> str:
    said = (f"**A product named {existing['name']} exists already.** Adding this one under its name replaces it: "
            "your first photo becomes its picture. Open it instead, tick Replace, or choose another name.")
    kind = f"what it is, “{existing['category']}”" if existing.get("category") else ""
    if existing.get("has_lora"):  # learnt under its words: new ones would call up nothing it learnt
        kept = " and ".join(filter(None, [f"the words that call it up, “{existing['trigger']}”", kind]))
        return f"{said} Showroom has learnt it: what it learnt is kept, and so are {kept}, unless you type others."
    return f"{said} Kept: {kind}, unless you type another." if kind else said


def _products() -> list[dict]:
    try:
        return services.current_catalog().get("products", [])
    except BackendError:
        return []


def _existing(name: str, products: list[dict]) -> dict | None:
    """The product with this name, else one whose name differs only in case (the backend refuses a second such
    name: on some storage the two would share their files)."""
    same = [p for p in products if p["name"].lower() == name.lower()]
    return next((p for p in same if p["name"] == name), same[0] if same else None)


def _add(typed: str, kind: str | None, trigger: str, photos: list, lora, weight: float,
         replacing: str | None) -> None:
    name = stored_name(typed)
    problem = _problem(typed, name, photos, lora)
    if problem:
        st.error(problem)
        return
    services.catalog.clear()  # read again: a product added elsewhere in the last minute is not replaced unasked
    existing = _existing(name, _products())
    if existing is not None and existing["name"] != replacing:
        scroll.ask("product-form")
        st.rerun()  # drawn again, the name's field says that the product exists, with Open and Replace
    if existing is not None:  # replacing it: what is left empty is kept, so what it learnt still works
        name, kind = existing["name"], kind or existing.get("category")
        if existing.get("has_lora") and lora is None:
            trigger, weight = trigger or existing["trigger"], existing.get("weight", weight)
    if lora is not None and (why := _not_a_lora(lora.getvalue())):  # said first: no words make such a file work
        st.error(f"**{name} was not added.** “{lora.name}” is not a LoRA Showroom can read: it takes `.safetensors` "
                 "LoRA files (as Civitai and Hugging Face offer them). A `.ckpt`, `.pt` or `.bin` file is refused, "
                 "because opening one can run code on the generator.", icon=":material/error:")
        chrome.backend_said(why)
        return
    if not trigger and lora is not None:  # a LoRA made elsewhere answers only to the words it was trained with
        trigger = lora_trigger(lora.getvalue()) or ""
        if not trigger:
            st.error(f"**{name} was not added.** “{lora.name}” does not say which words call its product up: type "
                     "the words it was trained with under Advanced (where it was published, they are usually "
                     "listed as its trigger words).", icon=":material/error:")
            return
    trigger = trigger or suggest_trigger(name, kind)
    files = [(p.name, p.getvalue(), p.type or "application/octet-stream") for p in photos]
    try:
        with st.spinner("Cutting the product out of the first photo…" if files else "Checking the LoRA…"):
            product = services.client().add_product(name, trigger, kind, weight,
                                                    lora=(lora.name, lora.getvalue()) if lora else None,
                                                    photo=files[0] if files else None, photos=_kept(files, replacing))
    except BackendError as e:
        _refused(name, e)
        return
    services.catalog.clear()
    services.packshot.clear()  # a product added again under an old name has a new picture
    services.added_photos.clear()  # and other photos to learn from
    st.session_state.setdefault(TEACH_PHOTOS, {})[product["name"]] = [
        (p.name, p.getvalue(), p.type or "application/octet-stream") for p in photos]
    nav.focus_product(product["name"])
    scroll.ask("product")
    st.rerun()


def _kept(files: list[tuple[str, bytes, str]], replacing: str | None) -> list[tuple[str, bytes, str]]:
    """The photos the backend keeps with the product, to teach it from after a reload or on another day: all of
    them, from two up (one cannot teach it); a replace's always, so none of the product it replaces stay."""
    return files if len(files) >= TRAINING_PHOTOS[0] or (files and replacing) else []


def _not_a_lora(data: bytes) -> str | None:
    """Why the file is no safetensors file (the reader's words), or None when its header reads; what is inside is
    the backend's to check."""
    try:
        read_safetensors_header(data)
    except LoraFormatError as e:
        return str(e)
    return None


def _refused(name: str, e: BackendError) -> None:
    if e.status != 503:  # the backend's reason is about what was sent: in its own words
        st.error(f"**{name} was not added.** {e.message[:1].upper()}{e.message[1:]}.", icon=":material/error:")
        return
    # the backend is missing a part (its background remover, its storage): its words are for whoever runs it
    if e.remover_missing:
        why = (f"{chrome.REMOVER_MISSING} Meanwhile a first photo whose background is already transparent "
               "(a PNG cut-out) needs no cutting out.")
    else:
        why = ("Showroom cannot take it right now, through no fault of yours: try again in a moment, and if it "
               "keeps happening, tell whoever runs Showroom.")
    st.error(f"**{name} was not added.** {why}", icon=":material/cloud_off:")
    chrome.backend_said(e.message)


def _problem(typed: str, name: str, photos: list, lora) -> str | None:
    """What stops the form before anything is sent, in words (the backend checks the rest)."""
    if not typed.strip():
        return "Give the product a name."
    if not name:
        return _NO_NAME
    if not photos and lora is None:
        return "Add at least one photo of the product (or its LoRA, under “I already have a LoRA”)."
    for photo in photos:
        if PurePath(photo.name).suffix.lower() not in PHOTO_SUFFIXES:
            return f"“{photo.name}” is not a photo Showroom can read: use PNG, JPEG or WebP files."
    if lora is not None and PurePath(lora.name).suffix.lower() != ".safetensors":
        return f"“{lora.name}” is not a .safetensors file: a LoRA must be saved in that format."
    return None


_NO_NAME = ("A name needs at least one letter (a to z) or digit: Showroom saves names in those, and this one has "
            "none. Type it in Latin letters, e.g. “Red bottle”.")


def stored_name(typed: str) -> str:
    """The name a product is saved under, from what was typed: "Red Bottle #1" -> "red-bottle-1", "Café crème"
    -> "cafe-creme". Accents folded, small letters, each run of other characters one '-', none at the ends, at
    most 64 characters: always a name the backend takes (NAME_RE). "" when nothing usable is left ("###")."""
    folded = unicodedata.normalize("NFKD", typed.casefold()).encode("ascii", "ignore").decode()
    name = re.sub(r"[^a-z0-9_]+", "-", folded).strip("-_")[:64].rstrip("-_")
    return name if NAME_RE.fullmatch(name) else ""
