"""The app's gate: without APP_PASSWORD only this machine is served; wrong passwords make the next try wait."""

from types import SimpleNamespace

import pytest

from frontend import auth


@pytest.mark.parametrize("ip, host, outside", [
    (None, "localhost:8501", False),
    (None, "127.0.0.1:8501", False),
    ("127.0.0.1", "", False),
    ("::1", "[::1]:8501", False),
    ("::ffff:127.0.0.1", "127.0.0.1:8501", False),  # a dual-stack server's view of a local browser
    ("::ffff:203.0.113.9", "127.0.0.1:8501", True),
    ("203.0.113.9", "localhost:8501", True),      # a remote connection, whatever Host it names
    (None, "shop.streamlit.app", True),           # reached by a public name (a proxy in front)
    ("192.168.1.20", "192.168.1.5:8501", True),   # the local network is not this machine
    ("not an address", "", True),
    # DNS rebinding: a page from 127.x.attacker.example whose name now points at 127.0.0.1 reaches this server
    # over loopback, and its Host is the attacker's name, not this machine's
    (None, "127.0.0.1.attacker.example:8501", True),
    (None, "127.attacker.example", True),
    (None, "127.0.0.2:8501", False),              # all of 127/8 is this machine
])
def test_from_outside(monkeypatch, ip, host, outside):
    monkeypatch.setattr(auth, "st", SimpleNamespace(context=SimpleNamespace(ip_address=ip, headers={"Host": host})))
    assert auth.from_outside() is outside


def test_each_wrong_password_doubles_the_wait_and_a_right_one_clears_it():
    now = [100.0]
    guard = auth.Throttle(clock=lambda: now[0])
    assert guard.wait_s("a") == 0
    guard.failed("a")
    assert guard.wait_s("a") == 1.0 and guard.wait_s("b") == 0, "per visitor"
    guard.failed("a")
    guard.failed("a")
    assert guard.wait_s("a") == 4.0
    for _ in range(10):
        guard.failed("a")
    assert guard.wait_s("a") == auth.MAX_WAIT_S
    now[0] += auth.MAX_WAIT_S
    assert guard.wait_s("a") == 0
    guard.succeeded("a")
    guard.failed("a")
    assert guard.wait_s("a") == 1.0, "a right password starts the count again"
