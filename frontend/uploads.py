"""How big a file each upload box takes: the limit that really applies, so that the box itself refuses a file
that is too big, in Streamlit's own words, before it is uploaded, instead of the backend answering 413 after.

The backend does not say its limits (/health lists none, and the contract names none), so these are its
defaults, as README documents them. A backend given other limits still refuses past its own, in words
(`client._megabytes`). The app's own server refuses any file past `server.maxUploadSize`
(.streamlit/config.toml) whatever a box says, so no box promises more than that.
"""

import streamlit as st

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
