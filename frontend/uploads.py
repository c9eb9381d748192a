"""How big a file each upload box takes: the limit that really applies, so that the box itself refuses a file
that is too big, in Streamlit's own words, before it is uploaded, instead of the backend answering 413 after.

The backend does not say its limits (/health lists none, and the contract names none), so these are its
defaults, as README documents them. A backend given other limits still refuses past its own, in words
(`client._megabytes`). The app's own server refuses any file past `server.maxUploadSize`
(.streamlit/config.toml) whatever a box says, so no box promises more than that.
"""

import io

import streamlit as st
from PIL import Image

from backend.images import ACCEPTED_FORMATS

MIB = 2**20
PHOTO_BYTES = 20 * MIB   # the backend's MAX_UPLOAD_BYTES default: any one photo (a job's, a product's, to learn from)
LORA_BYTES = 1024 * MIB  # the backend's MAX_LORA_BYTES default


def megabytes(limit_bytes: int | None, app_limit_mb: int) -> int:
    """The box's limit in whole MB for a backend limit in bytes (None: only the app's own limit applies).
    Rounded down, so the box never takes a file the backend refuses: the browser counts a MB as 1000² bytes
    (1024² on Windows), either way no more than `limit_bytes`."""
    if limit_bytes is None:
        return app_limit_mb
    return max(1, min(limit_bytes // MIB, app_limit_mb))


def _app_limit_mb() -> int:
    return int(st.get_option("server.maxUploadSize"))


def photo_mb() -> int:
    return megabytes(PHOTO_BYTES, _app_limit_mb())


def lora_mb() -> int:
    return megabytes(LORA_BYTES, _app_limit_mb())


def picture_mb() -> int:
    """A PNG whose settings are reused is read here, never sent: only the app's own limit applies (an A1111
    picture with hires fix may well pass 20 MB, and only its text is read)."""
    return megabytes(None, _app_limit_mb())


def unreadable(data: bytes) -> str | None:
    """Why a photo cannot be used, said the moment it is chosen (not after a cut-out or a job was asked for), or
    None. Only its header is read here: the backend still reads the whole file, and says if it is cut short."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            kind = img.format
    except Exception:  # PIL raises many kinds for what is not a picture: all mean the same to the user
        return ("**This file is not a picture Showroom can read.** Choose a PNG, JPEG or WebP photo (a PDF, or an "
                "iPhone HEIC photo renamed to .jpg, will not do: export it as JPEG first).")
    if kind not in ACCEPTED_FORMATS:
        return f"**This is a {kind} file, not a photo Showroom takes.** Save it as PNG, JPEG or WebP and choose that."
    return None
