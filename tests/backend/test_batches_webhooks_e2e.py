"""More jobs per click on the real stack: batches admitted whole or not at all, Standard Webhooks signed and
retried (also across a backend restart), and the art styles restyling a photo."""

import base64
import hashlib
import hmac
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from tests.factories import png_bytes

SMALL = {"steps": 2, "width": 64, "height": 64}
SECRET = "whsec_" + base64.b64encode(b"showroom-test-webhook-key-32byte").decode()


class Receiver:
    """A webhook receiver on 127.0.0.1 that answers `failures` 500s before it accepts."""

    def __init__(self, failures: int = 0):
        self.failures, self.received, self.refused = failures, [], 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                if receiver.failures > 0:
                    receiver.failures -= 1
                    receiver.refused += 1
                    self.send_response(500)
                else:
                    receiver.received.append((dict(self.headers), body))
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook?token=receiver-secret"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list[str]:
        return [json.loads(body)["type"] for _, body in self.received]

    def wait(self, event: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for headers, body in self.received:
                if json.loads(body)["type"] == event:
                    return {"headers": headers, "body": body}
            time.sleep(0.05)
        raise TimeoutError(f"no {event} received; got {self.events()}")

    def close(self):
        self.server.shutdown()


def verify(headers: dict, body: bytes) -> bool:
    """The receiver's side of Standard Webhooks, written from the specification."""
    key = base64.b64decode(SECRET.split("_", 1)[1])
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.{body.decode()}".encode()
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(sig == f"v1,{expected}" for sig in headers["webhook-signature"].split())


@pytest.fixture(scope="module")
def hooked(make_backend):
    return make_backend(WEBHOOK_SECRET=SECRET, WEBHOOK_ALLOWED_HOSTS="127.0.0.1", WEBHOOK_BACKOFF_S="0.3")


def test_a_job_sends_signed_webhooks_for_the_events_asked(hooked):
    receiver = Receiver()
    try:
        ticket = hooked.submit({"prompt": "a kettle", "num_images": 2, **SMALL, "webhook": receiver.url,
                                "webhook_events": ["job.started", "image.succeeded", "job.completed"]})
        done = receiver.wait("job.completed")
        payload = json.loads(done["body"])
        assert payload["data"]["id"] == ticket["id"] and payload["data"]["status"] == "succeeded"
        assert verify(done["headers"], done["body"])
        assert abs(int(done["headers"]["webhook-timestamp"]) - time.time()) < 60
        events = receiver.events()
        assert events.count("image.succeeded") == 2 and events.count("job.started") == 1
        assert "image.failed" not in events
        assert len({h["webhook-id"] for h, _ in receiver.received}) == len(events), "one id per message"
        with Image.open(io.BytesIO(hooked.storage.get(ticket["images"][0]["key"]))) as png:
            written = json.dumps(png.text)
        assert "a kettle" in written and "receiver-secret" not in written, "where it is reported is not in it"
        assert "receiver-secret" not in hooked.log(), "nor in the log"
    finally:
        receiver.close()


def test_a_receiver_that_fails_twice_gets_the_event_once_it_recovers(hooked):
    receiver = Receiver(failures=2)
    try:
        hooked.submit({"prompt": "a lamp", "num_images": 1, **SMALL, "webhook": receiver.url})
        receiver.wait("job.completed")
        assert receiver.refused == 2 and receiver.events() == ["job.completed"]
    finally:
        receiver.close()


def test_a_pending_delivery_survives_a_backend_restart(make_backend, tmp_path):
    receiver = Receiver(failures=10**6)
    env = dict(WEBHOOK_SECRET=SECRET, WEBHOOK_ALLOWED_HOSTS="127.0.0.1", WEBHOOK_BACKOFF_S="0.3",
               STORAGE_URL=f"file://{tmp_path}")
    try:
        first = make_backend(**env)
        job = first.wait_job(first.submit({"prompt": "a cup", "num_images": 1, **SMALL, "webhook": receiver.url})["id"])
        deadline = time.monotonic() + 30
        while not list((tmp_path / "webhooks").glob("*.json")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list((tmp_path / "webhooks").glob("*.json")), "the undelivered event is kept in storage"
        first.stop()
        receiver.failures = 0
        make_backend(wait_for="starting", **env)  # delivering needs no GPU worker
        done = receiver.wait("job.completed")
        assert json.loads(done["body"])["data"]["id"] == job["id"] and verify(done["headers"], done["body"])
        deadline = time.monotonic() + 10
        while list((tmp_path / "webhooks").glob("*.json")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not list((tmp_path / "webhooks").glob("*.json")), "delivered: no longer pending"
    finally:
        receiver.close()


@pytest.mark.parametrize("url, message", [
    ("http://127.0.0.1:9/hook", "WEBHOOK_ALLOWED_HOSTS"),
    ("http://localhost/hook", "WEBHOOK_ALLOWED_HOSTS"),
    ("http://169.254.169.254/latest/meta-data", "link-local"),
    ("ftp://example.com/x", "http or https"),
    ("http://user:pw@example.com/x", "credentials"),
    ("http://127.0.0.1:80:80/", "not a valid URL"),
    ("http://[::1/", "not a valid URL"),
    ("http://example.com:99999/", "not a valid URL"),
])
def test_a_webhook_to_a_private_address_or_another_scheme_is_refused(backend, url, message):
    r = backend.post("/v1/jobs", json={"prompt": "x", **SMALL, "webhook": url})
    assert r.status_code == 422 and message in r.json()["detail"]


def test_a_batch_lands_as_one_job_per_spec(backend):
    specs = [{"prompt": f"a shoe {i}", "num_images": 1, "seed": i, **SMALL} for i in range(3)]
    r = backend.post("/v1/batches", json={"jobs": specs})
    assert r.status_code == 202, r.text
    tickets = r.json()["jobs"]
    assert len(tickets) == 3 and len({t["id"] for t in tickets}) == 3
    for ticket, spec in zip(tickets, specs):
        job = backend.wait_job(ticket["id"])
        assert job["status"] == "succeeded" and job["spec"]["prompt"] == spec["prompt"]


def test_a_batch_with_one_bad_spec_is_refused_whole(backend):
    before = {j["id"] for j in backend.get("/v1/jobs?limit=200").json()["jobs"]}
    specs = [{"prompt": "fine", **SMALL}, {"template": "no-such-style", **SMALL}, {"prompt": "fine too", **SMALL}]
    r = backend.post("/v1/batches", json={"jobs": specs})
    assert r.status_code == 422 and r.json()["detail"].startswith("jobs[1]: unknown template 'no-such-style'")
    assert {j["id"] for j in backend.get("/v1/jobs?limit=200").json()["jobs"]} == before, "nothing queued"
    too_wide = backend.post("/v1/batches", json={"jobs": [specs[0], {**specs[2], "width": 4000}]})
    assert too_wide.status_code == 422 and too_wide.json()["detail"].startswith("jobs[1].width: "), \
        "a spec that breaks a schema rule is named as one that fails resolution: jobs[i]"
    assert backend.post("/v1/batches", json={"jobs": []}).status_code == 422
    assert backend.post("/v1/batches", json={"jobs": [{"prompt": "x"}] * 51}).status_code == 422


def test_a_batch_the_queue_cannot_take_is_429_and_nothing_is_queued(make_backend):
    small = make_backend(QUEUE_MAX_IMAGES="4")
    r = small.post("/v1/batches", json={"jobs": [{"prompt": "x", "num_images": 2, **SMALL}] * 3})
    assert r.status_code == 429 and "cannot take 6 more images" in r.json()["detail"]
    assert r.headers["retry-after"] and small.get("/v1/jobs").json()["jobs"] == []


def test_an_art_style_restyles_a_photo(backend):
    job = backend.wait_job(backend.submit({"template": "art-watercolour", "num_images": 1, **SMALL},
                                          png_bytes(64, 64))["id"])
    assert job["status"] == "succeeded", job
    assert job["spec"]["mode"] == "restyle" and job["spec"]["strength"] == 0.5
    assert "watercolour" in job["spec"]["prompt"] and "product" not in job["spec"]["prompt"]
