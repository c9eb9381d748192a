"""The Create page's photo part: what a photo is for (place the product, restyle the photo, or none),
the picture's shape, and in place mode the cut-out, where it goes, and the realism switches."""

import hashlib
from dataclasses import dataclass

import streamlit as st

from backend.storage import StorageError
from frontend import placement, services, uploads
from frontend.client import BackendError
from frontend.placement import ASPECTS, MODE_CAPTIONS, MODES, PRESETS
from frontend.views import chrome, job_actions

PHOTO_TYPES = ["png", "jpg", "jpeg", "webp"]
PHOTO_SHAPE = "photo_shape"  # (digest, width, height): the restyle photo whose shape the picture was given


@dataclass(frozen=True)
class PhotoChoice:
    mode: str
    upload: tuple[str, bytes, str] | None = None   # sent as the job's `image` part
    blocked: str | None = None                     # why Generate cannot run with this choice


def section(product: dict | None, native: int) -> PhotoChoice:
    st.radio("What to do with a photo", list(MODES), key="mode", format_func=MODES.get,
             captions=[MODE_CAPTIONS[m] for m in MODES])
    mode = st.session_state["mode"]
    if mode == "generate":
        if product and not product.get("has_lora"):
            _not_learnt(product)
        _shape(native)
        return PhotoChoice("generate")
    packshot_key = (product or {}).get("packshot_key") if mode == "place" else None
    if mode == "restyle":
        label, about = "Your photo", ("The whole photo is repainted in the style and words below; it is scaled to "
                                      "fill the picture and cropped at the centre, never stretched.")
    else:
        label = "Product photo" + (" (optional: without one, the product's cut-out is placed)" if packshot_key else "")
        about = "A PNG or WebP with transparency is used as it is; any other photo has its background removed."
    photo = st.file_uploader(label, type=PHOTO_TYPES, key="photo", help=about, max_upload_size=uploads.photo_mb())
    upload = (photo.name, photo.getvalue(), photo.type or "application/octet-stream") if photo else None
    upload = job_actions.reused_photo(upload)  # a reused job's photo, until another is chosen
    if upload and (problem := uploads.unreadable(upload[1])):
        st.error(problem, icon=":material/broken_image:")
        upload, unusable = None, "Choose a PNG, JPEG or WebP photo: this file cannot be read as one."
    else:
        unusable = None
    if mode == "restyle":
        if upload:
            _shape_of_photo(upload, native)
            _what_is_repainted(upload)
        st.slider("How much to change", 0.0, 1.0, step=0.05, key="strength", format="percent",
                  help="Strength: low keeps the photo nearly as it is; high lets the prompt repaint more of it.")
        _shape(native)
        return PhotoChoice("restyle", upload, unusable or (None if upload else "Upload the photo to restyle."))
    if unusable:
        return PhotoChoice("place", None, unusable)
    return _place(upload, product, packshot_key, native)


def _shape_of_photo(upload: tuple[str, bytes, str], native: int) -> None:
    """A photo just chosen to restyle sets the picture's shape to its own (at about the model's size), so none of
    it is cropped away unasked; a shape chosen after that is kept until another photo is chosen."""
    digest = hashlib.sha256(upload[1]).hexdigest()
    if st.session_state.get(PHOTO_SHAPE, (None,))[0] == digest:
        return
    size = placement.photo_canvas(upload[1], native)
    if size is None:
        return
    st.session_state["width"], st.session_state["height"] = size
    st.session_state["aspect"] = placement.preset_for(*size, native)
    st.session_state[PHOTO_SHAPE] = (digest, *size)


def _what_is_repainted(upload: tuple[str, bytes, str]) -> None:
    """The photo as it will be cropped to the picture's shape, so a cut-off head or product is seen before any
    GPU time is spent (place mode shows where its product goes the same way)."""
    ss = st.session_state
    if not placement.drawable(ss["width"], ss["height"]):
        return  # a size Advanced settings refuses, said there
    width, height = int(ss["width"]), int(ss["height"])
    pictures = services.restyle_preview(upload[1], width, height)
    if pictures is None:
        return
    photo, crop = pictures
    with st.container(key="pair-restyle"):  # side by side on a phone too (chrome.CSS), as place mode's pair
        left, right = st.columns(2)
    left.image(photo, caption="Your photo", width="stretch")
    right.image(crop, caption=f"What is repainted · {width} × {height}", width="stretch")


def _not_learnt(product: dict) -> None:
    """No photo with a product Showroom has not learnt: the pictures would show a product like it, not
    this one. Said before any GPU time is spent, with the way to the pictures the owner wants."""
    name = product["name"]
    has_photo = bool(product.get("packshot_key"))
    way = "Place its photo exactly as it is" if has_photo else "Place a photo of it"
    st.warning(f"**Showroom has not learnt {name} yet.** With No photo it draws from words alone: a product like "
               f"yours, not yours. {way}, or teach Showroom the product on the Products page.",
               icon=":material/school:")
    if has_photo:
        st.button(f"Place {name} as it is", key="place-instead", icon=":material/add_photo_alternate:",
                  on_click=_place_instead)


def _place_instead() -> None:
    st.session_state["mode"] = "place"


def _place(upload, product: dict | None, packshot_key: str | None, native: int) -> PhotoChoice:
    if upload:
        cut, blocked = _cutout(upload)
        caption = "The cut-out: kept pixel for pixel"
    elif packshot_key:
        cut, blocked = _packshot(packshot_key), None
        caption = f"{product['name']}'s cut-out: kept pixel for pixel"
    else:
        return PhotoChoice("place", None,
                           "Upload a photo of the product to place, or choose a product added from a photo.")
    if blocked:
        return PhotoChoice("place", upload, blocked)
    ss = st.session_state
    if cut is not None and placement.drawable(ss["width"], ss["height"]):
        at = PRESETS[ss["place_at"] or "centre"]
        width, height = int(ss["width"]), int(ss["height"])
        with st.container(key="pair-cutout"):  # side by side on a phone too: Position's effect stays in sight
            left, right = st.columns(2)
        left.image(services.cutout_on_checkerboard(cut), caption=caption, width="stretch")
        right.image(services.canvas_preview(cut, width, height, at.x, at.y, float(ss["place_scale"]),
                                            bool(ss.get("shadow")), float(ss.get("reflection") or 0.0)),
                    caption=f"Where it goes · {width} × {height}", width="stretch")
    st.pills("Position", list(PRESETS), key="place_at", required=True, format_func=lambda p: PRESETS[p].label)
    # shown as "60%": the share of the picture's width and height the product's box may take (placement.scale)
    st.slider("Size", 0.2, 1.0, step=0.05, key="place_scale", format="percent",
              help="How much of the picture the product may fill: at 60%, up to 60% of its width and of its height. "
                   "Its own proportions are kept.")
    _shape(native)
    with st.expander("Realism", icon=":material/light_mode:"):
        st.toggle("Contact shadow", key="shadow", help="A soft shadow where the product meets the ground.")
        st.toggle("Edge harmonisation", key="harmonize",
                  help="The product's outline takes on a little of the scene's light, so it does not look pasted.")
        st.slider("Floor reflection", 0.0, 0.8, step=0.05, key="reflection", format="percent",
                  help="For glossy floors (marble, a podium, polished wood, glass): the product is mirrored under "
                       "it, as strong as this where it stands and fading away below. 0% for sand, grass, fabric "
                       "and other matte floors; a glossy style sets it for you.")
    return PhotoChoice("place", upload)


def _cutout(upload: tuple[str, bytes, str]) -> tuple[bytes | None, str | None]:
    """The backend's cut-out of the upload, or why there is none (shown here)."""
    try:
        result = services.kept_cutout(upload)
        if result is None:
            with st.spinner("Cutting the product out…"):
                result = services.cutout(upload)
    except BackendError as e:
        if e.remover_missing:  # nothing the user can change
            st.warning(f"{chrome.REMOVER_MISSING} Meanwhile a photo whose background is already transparent (a PNG) "
                       "can still be placed, or choose Restyle.", icon=":material/cloud_off:")
            chrome.backend_said(e.message)
            return None, "The backend cannot cut products out right now."
        st.warning(f"The cut-out could not be made right now: {e.message}", icon=":material/cloud_off:")
        return None, "The cut-out could not be made: try again in a moment."
    if result.refusal:
        st.error(f"**Nothing to place in this photo.** {result.refusal[:1].upper()}{result.refusal[1:]}.",
                 icon=":material/hide_image:")
        return None, "No product could be cut out of this photo (see why above): choose another photo."
    if services.fills_the_photo(result.png, upload[1]):
        st.warning("**No background was found around the product**, so the whole photo will be kept as it is, "
                   "its background included. A photo with some space around the product, on a plain background, "
                   "gives a clean cut-out.", icon=":material/crop_free:")
    return result.png, None


def _packshot(key: str) -> bytes | None:
    """The packshot's bytes to preview, or None when storage cannot give them (the job still places it)."""
    try:
        if services.storage() is not None:
            return services.packshot(services.settings().storage_url, key)
    except StorageError:
        pass
    st.caption("The product's cut-out is placed; it cannot be shown here (storage is not readable).")
    return None


def _shape(native: int) -> None:
    # required: clicking the chosen shape again cleared it, and the same size then read "a custom size, set in
    # Advanced settings". A size typed there still clears it (custom_size), and no chip is lit then.
    st.pills("Shape", list(ASPECTS), key="aspect", on_change=_aspect_chosen, args=(native,), required=True,
             help=placement.shape_help(native))
    ss = st.session_state
    if ss.get("mode") == "restyle" and tuple(ss.get(PHOTO_SHAPE, ())[1:]) == (ss["width"], ss["height"]):
        custom = " · your photo's shape"
    else:
        custom = "" if ss.get("aspect") else " · a custom size, set in Advanced settings"
    st.caption(f"{ss['width']} × {ss['height']} px{custom}")


def _aspect_chosen(native: int) -> None:
    aspect = st.session_state.get("aspect")
    if aspect:
        st.session_state["width"], st.session_state["height"] = placement.canvas_size(aspect, native)


def custom_size() -> None:
    """Width or height typed by hand: no preset describes the picture's shape any more."""
    st.session_state["aspect"] = None
