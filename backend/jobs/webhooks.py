"""Webhooks for shop platforms and scripts: Standard Webhooks POSTs when a job starts, an image lands or
fails, and the job completes.

Events are read off the manifest store's changes (never blocking generation), queued in memory, and
each delivery is kept in storage (`webhooks/<delivery id>.json`) until it succeeds, so retries with
exponential backoff outlive a backend restart for about a day. A URL must be http(s); a host that
resolves to a private, loopback or link-local address is refused unless WEBHOOK_ALLOWED_HOSTS lists
it, at submit and again at each send (DNS can change), and the send connects to the address it checked.
Redirects are not followed; an attempt ends after ATTEMPT_S whatever the receiver does, and its answer's
body is never read. The log shows a receiver's scheme and host only (its path may hold a token).
"""

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import socket
import threading
import time
from datetime import datetime, timezone
from urllib.parse import urlparse

import httpx
from pydantic import BaseModel

from backend.errors import InvalidRequest
from backend.models import JobManifest, Status
from backend.storage import ObjectMissing, Storage, StorageError

log = logging.getLogger("showroom.webhooks")
FOLDER = "webhooks/"
TIMEOUT_S = 10.0          # each step of an attempt (connect, write, each read) ...
ATTEMPT_S = 15.0          # ... and the whole attempt: a receiver that trickles its answer is cut off
RETRY_FOR_S = 24 * 3600   # then the delivery is given up (and logged)
MAX_DELAY_S = 2 * 3600


class Delivery(BaseModel):
    id: str
    url: str
    body: str
    attempts: int = 0
    next_at: float = 0.0
    first_at: float = 0.0


def check_url(url: str, allowed_hosts: list[str]) -> str:
    """The URL if webhooks may go there; InvalidRequest with the reason if not."""
    vet(url, allowed_hosts)
    return url


def vet(url: str, allowed_hosts: list[str]) -> tuple[str, str]:
    """(host name, the address to connect to) if webhooks may go to `url`; InvalidRequest if not. The
    sender connects to this very address: a name that resolves elsewhere a moment later (DNS rebinding)
    cannot move the request to a private address."""
    try:
        parsed = urlparse(url)
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
    except ValueError:
        raise InvalidRequest(f"webhook is not a valid URL: {url[:200]!r}") from None
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise InvalidRequest(f"webhook must be an http or https URL, got {url[:200]!r}")
    if parsed.username or parsed.password:
        raise InvalidRequest("webhook must not carry credentials in the URL; sign with WEBHOOK_SECRET instead")
    host = parsed.hostname.lower()
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError, ValueError):
        raise InvalidRequest(f"webhook host {host!r} cannot be resolved") from None
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    if host not in allowed_hosts:
        for address in addresses:
            if not address.is_global or address.is_multicast:
                raise InvalidRequest(f"webhook host {host!r} resolves to {address}, a private, loopback or "
                                     "link-local address; list it in WEBHOOK_ALLOWED_HOSTS to allow it")
    return host, str(addresses[0])


def where(url: str) -> str:
    """A URL as the log shows it: scheme, host and port; its path and query may carry the receiver's token."""
    try:
        parsed = urlparse(url)
        return f"{parsed.scheme}://{parsed.hostname}{f':{parsed.port}' if parsed.port else ''}/..."
    except ValueError:
        return "(an invalid URL)"


def sign(secret: str, message_id: str, timestamp: int, body: str) -> str:
    """Standard Webhooks: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}"> keyed with the secret's bytes."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{message_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def events_between(before: JobManifest | None, after: JobManifest) -> list[str]:
    """The webhook events one manifest change makes, in order."""
    found = []
    if before is None:
        return found
    if before.status == Status.queued and after.status != Status.queued and any(
            img.started_at for img in after.images):
        found.append("job.started")
    for old, new in zip(before.images, after.images):
        if old.status != new.status and new.status in (Status.succeeded, Status.failed):
            found.append(f"image.{new.status.value}")
    if after.status.is_terminal() and not before.status.is_terminal():
        found.append("job.completed")
    return found


class Webhooks:
    def __init__(self, storage: Storage, secret: str | None, allowed_hosts: list[str], backoff_s: float = 5.0):
        self.storage, self.secret, self.allowed_hosts, self.backoff_s = storage, secret, allowed_hosts, backoff_s
        self._pending: dict[str, Delivery] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="webhooks", daemon=True)

    def start(self) -> "Webhooks":
        try:
            keys = self.storage.list_files(FOLDER)
        except StorageError as e:
            log.warning("pending webhook deliveries could not be listed at start: %s", e)
            keys = []
        for key in keys:  # one record that cannot be read does not keep the others from being retried
            try:
                delivery = Delivery.model_validate_json(self.storage.get(key))
            except ObjectMissing:
                continue  # delivered and removed meanwhile (another backend on the same bucket)
            except StorageError as e:
                log.warning("pending webhook delivery %s could not be read at start: %s", key, e)
                continue
            except ValueError:  # not the error's text: it quotes the record, whose URL may hold a token
                log.warning("pending webhook delivery %s is not a delivery record; skipped", key)
                continue
            self._pending[delivery.id] = delivery
        if self._pending:
            log.info("%d webhook deliveries pending from an earlier run", len(self._pending))
        self._thread.start()
        return self

    def close(self) -> None:
        self._stopping.set()
        self._wake.set()
        self._thread.join(5)

    def on_change(self, after: JobManifest, before: JobManifest | None) -> None:
        """ManifestStore's hook: queue what this change means for the job's webhook. Memory only."""
        url = after.spec.webhook
        if not url:
            return
        wanted = set(after.spec.webhook_events)
        for event in events_between(before, after):
            if event in wanted:
                body = json.dumps({"type": event, "timestamp": _iso_now(), "data": after.model_dump(mode="json")})
                delivery = Delivery(id=f"msg_{secrets.token_hex(12)}", url=url, body=body, first_at=time.time())
                with self._lock:
                    self._pending[delivery.id] = delivery
                self._wake.set()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                due = sorted((d for d in self._pending.values() if d.next_at <= time.time()), key=lambda d: d.first_at)
                wait = min((d.next_at for d in self._pending.values()), default=time.time() + 60) - time.time()
            for delivery in due:
                if self._stopping.is_set():
                    return
                self._attempt(delivery)
            if not due:
                self._wake.wait(max(0.05, min(wait, 60)))
                self._wake.clear()

    def _attempt(self, delivery: Delivery) -> None:
        if delivery.attempts == 0:
            self._save(delivery)  # kept before the first try: a restart goes on with it
        delivery.attempts += 1
        error = self._send(delivery)
        if error is None:
            self._forget(delivery)
            return
        elapsed = time.time() - delivery.first_at
        if elapsed > RETRY_FOR_S:
            log.error("webhook %s to %s given up after %d attempts: %s", delivery.id, where(delivery.url),
                      delivery.attempts, error)
            self._forget(delivery)
            return
        delivery.next_at = time.time() + min(MAX_DELAY_S, self.backoff_s * 2 ** (delivery.attempts - 1))
        log.warning("webhook %s to %s failed (%s); attempt %d in %.0f s", delivery.id, where(delivery.url), error,
                    delivery.attempts + 1, delivery.next_at - time.time())
        self._save(delivery)

    def _send(self, delivery: Delivery) -> str | None:
        try:
            host, address = vet(delivery.url, self.allowed_hosts)  # again: DNS may point elsewhere by now
        except InvalidRequest as e:
            return e.detail
        stamp = int(time.time())
        parsed = urlparse(delivery.url)
        headers = {"host": parsed.netloc, "content-type": "application/json", "webhook-id": delivery.id,
                   "webhook-timestamp": str(stamp)}
        if self.secret:
            headers["webhook-signature"] = sign(self.secret, delivery.id, stamp, delivery.body)
        literal = f"[{address}]" if ":" in address else address
        pinned = parsed._replace(netloc=f"{literal}:{parsed.port or (443 if parsed.scheme == 'https' else 80)}")
        try:
            status = asyncio.run(asyncio.wait_for(_post(pinned.geturl(), host, headers, delivery.body.encode()),
                                                  ATTEMPT_S))
        except TimeoutError:
            return f"no answer within {ATTEMPT_S:.0f} s"
        except httpx.HTTPError as e:
            return f"{type(e).__name__}: {e}"[:300]
        return None if 200 <= status < 300 else f"answered {status}"

    def _save(self, delivery: Delivery) -> None:
        try:
            self.storage.put(f"{FOLDER}{delivery.id}.json", delivery.model_dump_json().encode(), "application/json")
        except StorageError as e:
            log.warning("webhook %s not saved (%s): retried while this process runs", delivery.id, e)

    def _forget(self, delivery: Delivery) -> None:
        with self._lock:
            self._pending.pop(delivery.id, None)
        try:
            self.storage.delete(f"{FOLDER}{delivery.id}.json")
        except (StorageError, ObjectMissing) as e:
            log.warning("webhook %s record not removed: %s", delivery.id, e)


async def _post(url: str, host: str, headers: dict, body: bytes) -> int:
    """One POST to the vetted address, the certificate checked against the URL's host name (SNI). Only the
    status is read: a receiver's answer may be any size, and its body is not ours to keep."""
    async with httpx.AsyncClient(timeout=TIMEOUT_S, follow_redirects=False, trust_env=False) as client:
        async with client.stream("POST", url, content=body, headers=headers,
                                 extensions={"sni_hostname": host}) as response:
            return response.status_code


def _iso_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
