"""Idle stop (opt-in): a rented GPU box that has had no work for N minutes stops itself.

Pure logic plus an injected `stop` action, so it is tested with a fake clock and a fake stop.
`vast_stop_action` builds the real action for a vast.ai instance: inside one, vast sets
CONTAINER_ID (the instance id) and CONTAINER_API_KEY (a key scoped to that instance), and
stopping is `PUT {api}/instances/{id}/` with `{"state": "stopped"}` (vast's "manage instance").
A stopped instance keeps its disk (the model cache) and costs no GPU time; start it again from
the console or with `python docker/vast.py start ID`.

No torch here: this runs in the API process.
"""

import logging
import threading
import time
from collections.abc import Callable

from backend.ops.vast import VAST_API_URL, VastAPI, VastError

log = logging.getLogger("showroom.idle")


class Activity:
    """The monotonic time of the last unit of work; `touch()` it when something happens. Requests
    still being served (a large LoRA upload) are counted with `begin()`/`end()`: the box is busy."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._last = clock()
        self._open = 0
        self._lock = threading.Lock()

    def touch(self) -> None:
        with self._lock:
            self._last = self._clock()

    def last(self) -> float:
        with self._lock:
            return self._last

    def begin(self) -> None:
        with self._lock:
            self._open += 1

    def end(self, touch: bool) -> None:
        with self._lock:
            self._open -= 1
            if touch:
                self._last = self._clock()

    def serving(self) -> bool:
        with self._lock:
            return self._open > 0


class IdleStopper:
    """Calls `stop()` once nothing happened for `idle_minutes`.

    `last_activity()` returns the clock time of the last work; `busy()` (optional) says whether
    work is running or queued right now, which counts as activity. After a failed stop it tries
    again at the next check; after a successful one it never calls `stop` again.
    """

    def __init__(self, idle_minutes: float, last_activity: Callable[[], float], stop: Callable[[], None],
                 clock: Callable[[], float] = time.monotonic, busy: Callable[[], bool] = lambda: False):
        if idle_minutes <= 0:
            raise ValueError(f"idle_minutes must be above 0 (0 means idle stop is off), got {idle_minutes}")
        self.limit_s = idle_minutes * 60
        self._last_activity, self._stop, self._clock, self._busy = last_activity, stop, clock, busy
        self._busy_seen = clock()  # a fresh start counts as activity: the box was just rented for a reason
        self.stopped = False
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None

    def idle_for(self) -> float:
        """Seconds since the last activity, as of now."""
        now = self._clock()
        if self._busy():
            self._busy_seen = now
        return max(0.0, now - max(self._last_activity(), self._busy_seen))

    def check(self) -> bool:
        """Stop the instance if it has been idle long enough; True once it has been stopped."""
        if self.stopped:
            return True
        idle = self.idle_for()
        if idle < self.limit_s:
            return False
        log.warning("no work for %.0f minutes (limit %.0f): stopping this instance", idle / 60, self.limit_s / 60)
        try:
            self._stop()
        except Exception as e:  # the next check tries again; the message carries no secret (see vast_stop_action)
            log.error("idle stop failed, will retry: %s", e)
            return False
        self.stopped = True
        return True

    def run(self, interval_s: float = 30.0) -> None:
        """Check every `interval_s` seconds until stopped or `close()` is called."""
        while not self._halt.wait(interval_s):
            if self.check():
                return

    def start(self, interval_s: float = 30.0) -> "IdleStopper":
        self._thread = threading.Thread(target=self.run, args=(interval_s,), name="idle-stop", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        self._halt.set()
        if self._thread:
            self._thread.join(timeout)


class StopFailed(RuntimeError):
    pass


def vast_stop_action(instance_id: str | None, api_key: str | None, api_url: str = VAST_API_URL,
                     timeout_s: float = 30.0) -> Callable[[], None]:
    """The action that stops vast.ai instance `instance_id` (CONTAINER_ID) with its key (CONTAINER_API_KEY)."""
    if not instance_id or not str(instance_id).strip().isdigit():
        raise ValueError(f"idle stop needs the vast.ai instance id in CONTAINER_ID (vast sets it), got {instance_id!r}")
    if not api_key:
        raise ValueError("idle stop needs CONTAINER_API_KEY (vast sets it inside an instance)")
    api = VastAPI(api_key, api_url, timeout_s=timeout_s)

    def stop() -> None:
        try:
            api.set_state(str(instance_id).strip(), "stopped")
        except VastError as e:
            raise StopFailed(str(e)) from None

    return stop
