"""Each upload box states, and holds to, the limit that really applies: the backend's for what is sent to it,
the app's own for what the page only reads."""

import uuid

import streamlit as st

from frontend import services, uploads
from tests.factories import packshot
from tests.frontend.conftest import assert_no_exception, frontend_env

MIB = 2**20


def test_a_box_takes_no_file_the_backend_or_the_app_refuses():
    assert uploads.megabytes(20 * MIB, 200) == 20, "MAX_UPLOAD_BYTES' 20 MiB"
    assert uploads.megabytes(1024 * MIB, 200) == 200, "a 1 GiB LoRA limit, but the app's server takes 200 MB"
    assert uploads.megabytes(25_000_000, 200) == 23, "rounded down: 24 MB on Windows (24 MiB) is past 25,000,000 bytes"
    assert uploads.megabytes(None, 150) == 150, "read on the page only: the app's own limit"


def limit(at, key: str) -> int:
    return at.file_uploader(key=key).proto.max_upload_size_mb


def test_every_upload_box_says_the_limit_that_applies(backend, open_app):
    name = f"jar-{uuid.uuid4().hex[:6]}"
    r = backend.post("/v1/products", data={"name": name, "trigger": "qzv jar"},
                     files={"photo": ("j.png", packshot(), "image/png")})
    assert r.status_code == 201, r.text
    app_mb = st.get_option("server.maxUploadSize")
    assert app_mb > 20, "the test needs an app limit above the backend's photo limit"

    at = open_app(frontend_env(backend))
    at.radio(key="mode").set_value("restyle").run()
    assert_no_exception(at)
    assert limit(at, "photo") == 20, "the backend refuses a photo past MAX_UPLOAD_BYTES (20 MiB)"
    assert limit(at, "reuse_png") == app_mb, "a picture to reuse is only read by the page"

    at.switch_page("app_pages/products.py").run()
    assert_no_exception(at)
    assert limit(at, "add_photos") == 20
    assert limit(at, "add_lora") == min(1024, app_mb), "MAX_LORA_BYTES (1 GiB), within what the app's server takes"

    services.catalog.clear()  # the product added above
    at.query_params["product"] = name
    at.switch_page("app_pages/products.py").run()
    assert_no_exception(at)
    assert limit(at, "teach_upload") == 20, "each photo to learn from is held to MAX_UPLOAD_BYTES"
