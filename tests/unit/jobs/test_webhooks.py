"""One webhook delivery attempt against receivers on 127.0.0.1: it connects to the address it checked,
never reads an answer's body, and ends after ATTEMPT_S whatever the receiver does."""

import socket
import threading
import time

import pytest

from backend.jobs import webhooks
from backend.jobs.webhooks import Delivery, Webhooks
from backend.storage import LocalStorage


class RawReceiver:
    """A TCP server on 127.0.0.1 that reads the request, then runs `answer(conn)`."""

    def __init__(self, answer):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port, self.requests = self.sock.getsockname()[1], []
        self.answer = answer
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                self.requests.append(conn.recv(65536))
                try:
                    self.answer(conn)
                except OSError:
                    pass

    def close(self):
        self.sock.close()


def send(tmp_path, url: str, allowed=("127.0.0.1",)) -> str | None:
    hooks = Webhooks(LocalStorage(tmp_path), None, list(allowed))
    return hooks._send(Delivery(id="msg_1", url=url, body='{"type": "job.completed"}'))


def test_an_answer_is_judged_by_its_status_and_its_body_is_never_read(tmp_path):
    def huge(conn):  # says 300 MB are coming, sends 1 MB, then holds the connection
        conn.sendall(b"HTTP/1.1 204 No Content\r\nContent-Length: 314572800\r\n\r\n" + b"x" * 2**20)
        time.sleep(3)

    receiver = RawReceiver(huge)
    try:
        started = time.monotonic()
        assert send(tmp_path, f"http://127.0.0.1:{receiver.port}/hook") is None
        assert time.monotonic() - started < 2
    finally:
        receiver.close()


def test_a_receiver_that_trickles_its_answer_is_cut_off(tmp_path, monkeypatch):
    monkeypatch.setattr(webhooks, "ATTEMPT_S", 1.0)

    def trickle(conn):
        for byte in b"HTTP/1.1 200 OK\r\n" * 10:
            conn.sendall(bytes([byte]))
            time.sleep(0.2)  # each read well inside TIMEOUT_S: only the attempt's own deadline stops it

    receiver = RawReceiver(trickle)
    try:
        started = time.monotonic()
        assert send(tmp_path, f"http://127.0.0.1:{receiver.port}/hook") == "no answer within 1 s"
        assert time.monotonic() - started < 2
    finally:
        receiver.close()


def test_the_request_goes_to_the_address_checked_with_the_urls_host(tmp_path, monkeypatch):
    """hook.test resolves (here) to 127.0.0.1 once: the send connects there and names hook.test as Host,
    where an HTTP client resolving the name again could be sent elsewhere (DNS rebinding)."""
    receiver = RawReceiver(lambda conn: conn.sendall(b"HTTP/1.1 204 No Content\r\n\r\n"))
    real = socket.getaddrinfo

    def resolve(host, *args, **kwargs):
        if host == "hook.test":
            return real("127.0.0.1", *args, **kwargs)
        raise socket.gaierror(f"{host} is not to be resolved by anyone but the vetting")

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    try:
        assert send(tmp_path, f"http://hook.test:{receiver.port}/hook?t=1", allowed=("hook.test",)) is None
        head = receiver.requests[0].decode("latin-1")
        assert head.startswith("POST /hook?t=1 HTTP/1.1") and f"host: hook.test:{receiver.port}" in head.lower()
    finally:
        receiver.close()


@pytest.mark.parametrize("url", ["http://127.0.0.1:80:80/", "http://[::1/", "http://a.b:99999/"])
def test_a_malformed_url_is_a_clear_refusal(url):
    with pytest.raises(webhooks.InvalidRequest, match="not a valid URL"):
        webhooks.check_url(url, [])


def test_the_log_shows_a_receivers_host_not_its_path():
    assert webhooks.where("https://shop.example:8443/hooks/abc?token=s3cret") == "https://shop.example:8443/..."


def test_pending_deliveries_are_all_taken_back_at_start_past_one_that_cannot_be_read(tmp_path, caplog):
    """One record that cannot be read (cut short, or delivered and removed by another backend on the same bucket
    between the listing and the read) must not keep the others from being retried: they would wait for the next
    restart, and meet the same record there. The log names the record, not what it holds (a URL's token)."""
    storage = LocalStorage(tmp_path)
    storage.put("webhooks/msg_0.json", b'{"id": "msg_0", "url": "https://shop.example/hook?token=s3cret", "bo',
                "application/json")
    later = time.time() + 3600  # not due: nothing is sent during the test
    for n in (1, 2):
        delivery = Delivery(id=f"msg_{n}", url="https://shop.example/hook", body="{}", attempts=1, next_at=later,
                            first_at=time.time())
        storage.put(f"webhooks/msg_{n}.json", delivery.model_dump_json().encode(), "application/json")
    hooks = Webhooks(storage, None, []).start()
    try:
        assert sorted(hooks._pending) == ["msg_1", "msg_2"]
        assert "msg_0" in caplog.text and "s3cret" not in caplog.text
    finally:
        hooks.close()
