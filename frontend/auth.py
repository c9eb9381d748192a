"""An optional password in front of the app (APP_PASSWORD): a public page with a GPU behind it is an open wallet.

Without a password the app serves only people on this machine (the contract's rule): a visitor from any
other address, Streamlit Community Cloud included, sees what to set and nothing else. Wrong passwords are
throttled per session and per address, so guessing costs time.
"""

import hmac
import ipaddress
import threading
import time

import streamlit as st

FIRST_WAIT_S, MAX_WAIT_S = 1.0, 60.0  # after each wrong password the next try waits twice as long


def require_password(expected: str | None) -> None:
    """Return when this visitor may use the app; otherwise draw why not (or the form) and stop."""
    if admitted(expected):
        return
    if not expected:
        _closed()
    _form(expected)


def admitted(expected: str | None) -> bool:
    """Whether this visitor may use the app now (nothing drawn)."""
    if not expected:
        return not from_outside()
    return bool(st.session_state.get("authenticated"))


def from_outside() -> bool:
    """True when the visitor did not come from this machine (by the connection's address or the Host asked for)."""
    address = st.context.ip_address
    if isinstance(address, str):  # None for a localhost connection (and no string at all under AppTest)
        try:
            ip = ipaddress.ip_address(address.split("%")[0])
        except ValueError:
            return True
        if not _loopback(ip):
            return True
    host = st.context.headers.get("Host") or ""
    host = host.lower() if isinstance(host, str) else ""
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
    return bool(host) and not _loopback_name(name)


def _loopback(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return (getattr(ip, "ipv4_mapped", None) or ip).is_loopback  # a dual-stack server sees ::ffff:127.0.0.1


def _loopback_name(name: str) -> bool:
    """A Host that names this machine: localhost, or a loopback address written out. Not a name that merely
    starts like one: 127.0.0.1.attacker.example can be pointed at 127.0.0.1 (DNS rebinding), and a page
    served under it would then drive this app from the visitor's browser."""
    if name == "localhost":
        return True
    try:
        return _loopback(ipaddress.ip_address(name.removeprefix("[").removesuffix("]")))
    except ValueError:
        return False


class Throttle:
    """Wrong passwords per address (shared by every session of this server) and per session."""

    def __init__(self, clock=time.monotonic):
        self.clock, self.lock = clock, threading.Lock()
        self.failures: dict[str, tuple[int, float]] = {}  # who -> (wrong tries, earliest next try)

    def wait_s(self, who: str) -> float:
        with self.lock:
            _, next_at = self.failures.get(who, (0, 0.0))
            return max(0.0, next_at - self.clock())

    def failed(self, who: str) -> None:
        with self.lock:
            count, _ = self.failures.get(who, (0, 0.0))
            wait = min(MAX_WAIT_S, FIRST_WAIT_S * 2 ** count)
            self.failures[who] = (count + 1, self.clock() + wait)

    def succeeded(self, who: str) -> None:
        with self.lock:
            self.failures.pop(who, None)


@st.cache_resource
def throttle() -> Throttle:
    return Throttle()


def _visitor_keys() -> list[str]:
    session = st.session_state.setdefault("_visitor", f"session:{id(st.session_state)}:{time.time_ns()}")
    return [session, f"address:{st.context.ip_address or 'local'}"]


def _form(expected: str) -> None:
    _, middle, _ = st.columns([1, 1.2, 1])
    with middle, st.form("login", border=True):
        st.markdown("### ◆ Showroom")
        st.caption("This studio is private. Enter the password you were given.")
        entered = st.text_input("Password", type="password", key="password")
        if st.form_submit_button("Enter", type="primary", width="stretch"):
            keys, guard = _visitor_keys(), throttle()
            wait = max(guard.wait_s(key) for key in keys)
            if wait > 0:
                st.error(f"Too many wrong passwords: try again in {wait:.0f} s.")
            # compare_digest takes the same time wherever the first wrong character is
            elif hmac.compare_digest(entered.encode(), expected.encode()):
                for key in keys:
                    guard.succeeded(key)
                st.session_state["authenticated"] = True
                st.rerun()
            else:
                for key in keys:
                    guard.failed(key)
                st.error("That password is not right.")
    st.stop()


def _closed() -> None:
    st.markdown("### ◆ Showroom")
    st.error("This studio has no password, so it only serves the machine it runs on. To open it to others "
             "(Streamlit Community Cloud, a public address, your local network), set APP_PASSWORD in the app's "
             "secrets or environment, and give the password to the people who should use it.")
    st.stop()
