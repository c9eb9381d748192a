"""What the pages do when their inputs are broken: a manifest of the wrong shape, a /health answer
that is not the contract's, a STORAGE_URL that cannot be opened, a crafted job link, a secrets file
that cannot be read, a submit whose answer is lost. The page explains; it never shows a traceback."""

import http.server
import json
import threading
import time
import uuid

import pytest
import requests

from backend.storage import LocalStorage, StorageError
from frontend import client as client_module
from frontend import settings as settings_module
from frontend.jobs import load_job, recent_jobs
from frontend.services import health_from
from tests.frontend.conftest import SMALL, assert_no_exception, frontend_env, offline_url, page_text, shown_images

MALFORMED = [
    [1, 2, 3],                                               # JSON, but not an object
    {"id": "x", "images": [{"index": 0}]},                   # an image without its key
    {"id": "x", "images": [{"index": "first", "key": "k"}]},  # an index that is not a number
    {"images": [{"index": 0, "key": "k"}]},                  # no id
    {"id": "x", "images": "all of them"},                    # images not a list of records
    {"id": "x", "spec": {"width": "wide"}, "images": []},    # a size that is not a number
]


@pytest.mark.parametrize("manifest", MALFORMED)
def test_a_manifest_of_the_wrong_shape_is_a_storage_error_not_a_crash(manifest, tmp_path):
    storage, job_id = LocalStorage(tmp_path), uuid.uuid4().hex
    storage.put(f"jobs/{job_id}/job.json", json.dumps(manifest).encode())
    with pytest.raises(StorageError, match="malformed|not a JSON object"):
        load_job(storage, job_id)


def test_history_skips_unreadable_jobs_and_keeps_the_rest(tmp_path):
    storage = LocalStorage(tmp_path)
    good = uuid.uuid4().hex
    storage.put(f"jobs/{good}/job.json", json.dumps({"id": good, "images": [{"index": 0, "key": "k"}]}).encode())
    for manifest in MALFORMED:
        storage.put(f"jobs/{uuid.uuid4().hex}/job.json", json.dumps(manifest).encode())
    assert [job.id for job in recent_jobs(storage, 50).jobs] == [good]


@pytest.mark.parametrize("body", [[], "ok", {"status": "ok", "queue": {"pending": None}},
                                  {"status": ["ok"]}, {"status": "ok", "workers": [1, 2]}])
def test_a_health_answer_of_another_shape_is_shown_as_an_error_or_read_safely(body):
    health = health_from(body)
    assert health.state in ("error", "online") and health.pending == 0


def test_a_storage_url_that_cannot_be_opened_is_explained_on_every_page(open_app):
    env = {"BACKEND_URL": offline_url(), "STORAGE_URL": "ftp://not-a-store"}
    at = open_app(env, job=uuid.uuid4().hex)
    assert_no_exception(at)
    assert "Storage is not answering" in page_text(at) and "STORAGE_URL cannot be opened" in page_text(at)
    for page in ("app_pages/history.py", "app_pages/products.py"):
        at.switch_page(page).run()
        assert_no_exception(at)
    assert "STORAGE_URL cannot be opened" in page_text(at)


def test_a_crafted_job_link_does_not_put_its_text_in_the_page(open_app):
    at = open_app({"BACKEND_URL": offline_url()}, job="[Sign in again](https://evil.example/login)")
    assert_no_exception(at)
    assert "does not point to a job" in page_text(at)
    assert "evil.example" not in page_text(at) and "Sign in again" not in page_text(at)


def test_a_malformed_manifest_leaves_history_and_its_job_link_usable(backend, open_app):
    job = backend.wait_job(backend.submit({"prompt": "a lamp", "num_images": 1, **SMALL})["id"])
    broken = uuid.uuid4().hex
    backend.storage.put(f"jobs/{broken}/job.json", json.dumps({"id": broken, "images": [{"index": 0}]}).encode())
    at = open_app(frontend_env(backend))
    at.switch_page("app_pages/history.py").run()
    assert_no_exception(at)
    assert [b for b in at.button if b.key == f"open-{job['id']}"], "the readable job is still listed"
    assert not [b for b in at.button if b.key == f"open-{broken}"]

    at = open_app(frontend_env(backend), job=broken)
    assert_no_exception(at)
    assert "malformed" in page_text(at)


def test_the_open_job_stays_on_screen_after_visiting_another_page(backend, open_app):
    job = backend.wait_job(backend.submit({"prompt": "a vase", "num_images": 1, **SMALL})["id"])
    at = open_app(frontend_env(backend), job=job["id"])
    assert shown_images(at) == 1
    at.switch_page("app_pages/products.py").run()
    at.query_params.clear()  # what Streamlit does to the URL on a page switch
    at.switch_page("app_pages/create.py").run()
    assert_no_exception(at)
    assert shown_images(at) == 1 and at.query_params.get("job") == job["id"], page_text(at)


def test_a_secrets_file_that_cannot_be_read_refuses_to_open(tmp_path, monkeypatch):
    broken = tmp_path / "secrets.toml"
    broken.write_text('APP_PASSWORD = "unterminated\n')
    monkeypatch.setattr(settings_module.st.secrets, "load_if_toml_exists", lambda: False)  # as streamlit answers
    monkeypatch.setattr(settings_module.st, "get_option", lambda name: [str(tmp_path / "absent.toml"), str(broken)])
    with pytest.raises(settings_module.SecretsUnreadable, match="cannot be read"):
        settings_module.load_settings()
    broken.unlink()
    assert settings_module.load_settings().app_password is None, "no secrets file at all is fine"


def test_the_app_fails_closed_when_its_secrets_cannot_be_read(backend, open_app, monkeypatch):
    def unreadable():
        raise settings_module.SecretsUnreadable("the secrets file /app/.streamlit/secrets.toml cannot be read")

    monkeypatch.setattr(settings_module, "_has_secrets", unreadable)
    at = open_app(frontend_env(backend))
    assert_no_exception(at)
    assert "Showroom cannot start" in page_text(at)
    assert not [b for b in at.button if b.key == "generate"] and shown_images(at) == 0


class SlowFirstAnswer(http.server.ThreadingHTTPServer):
    """A proxy to the backend that records each submit's Idempotency-Key and answers the first
    submit too late for the page: the job is made, but its ticket never reaches the page."""

    daemon_threads = True

    def __init__(self, backend_url: str, delay_s: float):
        self.backend_url, self.delay_s, self.keys = backend_url, delay_s, []
        super().__init__(("127.0.0.1", 0), _Forward)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Forward(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _forward(self, method: str) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
        answer = requests.request(method, self.server.backend_url + self.path, data=body, headers=headers, timeout=30)
        if method == "POST" and self.path == "/v1/jobs":
            self.server.keys.append(self.headers.get("Idempotency-Key"))
            if len(self.server.keys) == 1:
                time.sleep(self.server.delay_s)
        try:
            self.send_response(answer.status_code)
            self.send_header("Content-Type", answer.headers.get("Content-Type", "application/json"))
            self.send_header("Content-Length", str(len(answer.content)))
            self.end_headers()
            self.wfile.write(answer.content)
        except OSError:
            pass  # the page stopped waiting

    def do_GET(self):
        self._forward("GET")

    def do_POST(self):
        self._forward("POST")


def test_generate_again_after_a_lost_answer_picks_up_the_same_job(backend, open_app, monkeypatch):
    monkeypatch.setattr(client_module, "READ_S", 1.0)
    proxy = SlowFirstAnswer(backend.url, delay_s=2.5)
    try:
        at = open_app(frontend_env(backend, BACKEND_URL=proxy.url))
        at.text_area(key="prompt").input(f"a kettle {uuid.uuid4().hex[:6]}")
        at.number_input(key="steps").set_value(2)
        at.slider(key="num_images").set_value(1)
        for name in ("width", "height"):
            at.number_input(key=name).set_value(64)
        at.button(key="generate").click().run()
        assert_no_exception(at)
        assert "may have started" in page_text(at) and not at.query_params.get("job")

        at.button(key="generate").click().run()  # the user presses again
        first = at.query_params.get("job")
        assert first and proxy.keys[0] == proxy.keys[1], "the retry carries the first request's key"
        assert backend.wait_job(first)["status"] == "succeeded"

        at.button(key="generate").click().run()  # answered: pressing again is a new job
        assert len(proxy.keys) == 3 and proxy.keys[2] != proxy.keys[0]
        assert at.query_params.get("job") not in (None, first)
    finally:
        proxy.shutdown()


class _Broken(http.server.BaseHTTPRequestHandler):
    """A backend that fails inside: the 500 and the words its error handler answers with."""

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.dumps({"detail": "internal error; the server log has the details"}).encode()
        self.send_response(500)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_a_backend_failing_inside_is_explained_without_sending_the_owner_to_a_log():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Broken)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = client_module.ShowroomClient(f"http://127.0.0.1:{server.server_address[1]}", None)
        with pytest.raises(client_module.BackendError) as refused:
            client.add_product("blue-mug", "zwx mug", "mug", photo=("mug.png", b"png", "image/png"))
    finally:
        server.shutdown()
    assert refused.value.status == 500
    message = refused.value.message
    assert "server log" not in message, "a shop owner has no server log to read"
    assert "not caused by what you entered" in message and "try again in a moment" in message


def test_a_photo_over_the_size_limit_is_refused_in_megabytes_not_bytes(backend):
    client = client_module.ShowroomClient(backend.url, backend.env.get("API_KEY"))
    too_big = b"\x89PNG" + bytes(20 * 2**20)  # just over the backend's default 20 MiB
    with pytest.raises(client_module.BackendError) as refused:
        client.add_product(f"big-{uuid.uuid4().hex[:6]}", "zwx mug", "mug", photo=("big.png", too_big, "image/png"))
    assert refused.value.status == 413
    assert "20\u00a0MB" in refused.value.message and "bytes" not in refused.value.message, refused.value.message
