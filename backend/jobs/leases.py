"""Who runs which unfinished job, so that two backends on one bucket never both take a job back.

Each backend has an owner id and keeps a heartbeat in storage (`index/backends/<owner>.json`, renewed
every RENEW_S, valid for LEASE_S). A job's unfinished marker (`index/unfinished/<id>`) holds the id of
the backend that runs it. Another backend takes a job back only when that owner is gone: its heartbeat
expired or removed (a clean stop removes it), or it is an earlier run on this same machine whose process
is no longer there (a restart takes its jobs back at once rather than after the lease). Taking a job is
a conditional write of its marker (S3's If-Match), so of two backends racing for it exactly one wins.
Trainings are held the same way, by a marker in their own folder (`trainings/<id>/owner`).

Heartbeats compare wall clocks: the boxes sharing a bucket need NTP (a skew well under LEASE_S).
"""

import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from backend.contract import training_owner_key, unfinished_key
from backend.storage import ObjectMissing, Storage, StorageError, WriteConflict

log = logging.getLogger("showroom.leases")
LEASE_S = 60.0   # a backend not heard from for this long is gone, and its jobs may be taken back
RENEW_S = 15.0   # how often a backend says it is still here
BACKENDS = "index/backends/"
ANSWER_S = 2.0   # how long an answer about another backend is reused within a scan


def machine_id() -> str:
    """This machine (or container): the host name, systemd's machine id where there is one, and the PID
    namespace, within which a process id means something: two containers sharing the host's name (host
    networking) and an image's machine id still see each other's processes as another machine's."""
    parts = [socket.gethostname()]
    for read in (lambda: Path("/etc/machine-id").read_text().strip()[:12],
                 lambda: os.readlink("/proc/self/ns/pid").strip("pid:[]")):
        try:
            parts.append(read())
        except OSError:
            pass
    return ":".join(part for part in parts if part)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


class Leases:
    def __init__(self, storage: Storage, lease_s: float = LEASE_S, renew_s: float = RENEW_S,
                 machine: str | None = None):
        self.storage = storage.responsive()
        self.lease_s, self.renew_s = lease_s, renew_s
        self.me = f"{socket.gethostname()[:40]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.machine, self.pid = machine or machine_id(), os.getpid()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._live: set[str] = set()  # other backends alive when last looked at
        self._answers: dict[str, tuple[float, bool]] = {}  # owner -> (until when, alive), for one scan

    def _key(self, owner: str) -> str:
        return f"{BACKENDS}{owner}.json"

    # ----- this backend's heartbeat -----
    def start(self) -> "Leases":
        try:
            self.beat()
        except StorageError as e:  # the thread tries again; until then our jobs may look ownerless
            log.warning("heartbeat not written at start-up: %s", e)
        self._thread = threading.Thread(target=self._beat_loop, name="lease", daemon=True)
        self._thread.start()
        return self

    def beat(self) -> None:
        record = {"owner": self.me, "machine": self.machine, "pid": self.pid, "expires": time.time() + self.lease_s}
        self.storage.put(self._key(self.me), json.dumps(record).encode(), "application/json")

    def _beat_loop(self) -> None:
        last_ok = time.monotonic()
        while not self._stopping.wait(self.renew_s):
            try:
                self.beat()
            except StorageError as e:
                log.warning("heartbeat not renewed (%s): after %g s other backends may take this one's jobs",
                            e, self.lease_s)
                continue
            if time.monotonic() - last_ok > self.lease_s:  # known limit: see docs/RELIABILITY.md
                log.error("this backend's lease lapsed for %.0f s (storage unreachable): another backend on the "
                          "bucket may have taken its unfinished jobs, and an image may be made twice",
                          time.monotonic() - last_ok)
            last_ok = time.monotonic()

    def close(self) -> None:
        """A clean stop: the heartbeat goes, so another backend may take our unfinished jobs at once."""
        self._stopping.set()
        if self._thread:
            self._thread.join(5)
        try:
            self.storage.delete(self._key(self.me))
        except StorageError as e:
            log.warning("heartbeat not removed (%s); it lapses in %g s", e, self.lease_s)

    # ----- other backends -----
    def alive(self, owner: str) -> bool:
        """Whether `owner` still runs its jobs. Raises StorageError when storage cannot say."""
        if not owner:
            return False  # a marker from before leases: nobody claims it
        if owner == self.me:
            return True
        with self._lock:
            known = self._answers.get(owner)
        if known and known[0] > time.monotonic():  # a scan of many jobs of one owner asks storage once
            return known[1]
        answer = self._ask(owner)
        with self._lock:
            self._answers[owner] = (time.monotonic() + ANSWER_S, answer)
        return answer

    def _ask(self, owner: str) -> bool:
        try:
            record = json.loads(self.storage.get(self._key(owner)))
        except ObjectMissing:
            return False
        except ValueError:
            return False
        if record.get("expires", 0) < time.time():
            return False
        if record.get("machine") == self.machine:  # an earlier run here, or a neighbour on this machine
            pid = int(record.get("pid", 0))
            if pid == self.pid or not _process_alive(pid):
                return False
        return True

    def runs_elsewhere(self, job_id: str) -> str | None:
        """The live backend other than this one whose unfinished job this is, or None (finished, this one's,
        or its backend gone). Raises StorageError when storage cannot say."""
        try:
            owner = self.storage.get(unfinished_key(job_id)).decode("utf-8", "replace").strip()
        except ObjectMissing:
            return None
        return owner if owner and owner != self.me and self.alive(owner) else None

    def claim(self, job_id: str) -> bool:
        """Make this backend the owner of an unfinished job, unless a live backend owns it (False) or the
        job finished meanwhile (False). Raises StorageError when storage cannot say."""
        return self._claim(unfinished_key(job_id), f"job {job_id}", unowned_if_missing=False)

    def claim_training(self, training_id: str) -> bool:
        """The same for an unfinished training (its owner marker `trainings/<id>/owner`); a training from
        before leases has no marker and is taken by whoever writes one first."""
        return self._claim(training_owner_key(training_id), f"training {training_id}", unowned_if_missing=True)

    def _claim(self, key: str, what: str, unowned_if_missing: bool) -> bool:
        try:
            data, version = self.storage.get_versioned(key)
        except ObjectMissing:
            if not unowned_if_missing:
                return False
            data, version = b"", None
        owner = data.decode("utf-8", "replace").strip()
        if owner == self.me:
            return True
        if self.alive(owner):
            return False
        try:
            self.storage.put_if(key, self.me.encode(), version)
        except WriteConflict:
            log.info("%s was taken by another backend first", what)
            return False
        if owner:
            log.info("%s: its backend %s is gone; this one (%s) takes it", what, owner, self.me)
        return True

    def gone(self) -> set[str]:
        """Backends that were alive when last looked at and are not now, plus heartbeats left by backends
        that died: their unfinished jobs are for the taking. One LIST, and a GET per other backend."""
        keys = self.storage.list_files(BACKENDS)
        listed = {key[len(BACKENDS):-len(".json")] for key in keys if key.endswith(".json")}
        live = {owner for owner in listed - {self.me} if self.alive(owner)}
        with self._lock:
            before, self._live = self._live, live
        return (before - live) | (listed - live - {self.me})

    def forget(self, owners: set[str]) -> None:
        """Remove the heartbeats of backends whose jobs were taken: they are not looked at again."""
        for owner in owners:
            try:
                self.storage.delete(self._key(owner))
            except StorageError as e:
                log.warning("stale heartbeat of %s not removed: %s", owner, e)
