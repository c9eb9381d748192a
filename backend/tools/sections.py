"""The sections of an unattended run on a rented box (gpu-check): each one's error recorded and the next
run, a time budget, a hang cut short, and what was measured on disk after every section."""

import json
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path


class SectionCut(BaseException):
    """A section ran past its time limit. Not an Exception: the sections' own per-part handlers (bench's)
    must not catch it and go on with the next part."""


class Check:
    """Runs sections, each with its error recorded, within a time budget: a section that would start past it
    is skipped, and one that runs far past its estimate is cut (a hang must not cost the whole box). After
    each section the result so far is written, so a run stopped from outside still leaves its figures."""

    def __init__(self, budget_s: float, path: Path | None = None):
        self.started, self.budget_s, self.path = time.monotonic(), budget_s, path
        self.result: dict = {"errors": {}, "skipped": [], "cut": [], "complete": False}

    def limit_s(self, cost_s: float) -> float:
        """How long a section may run: four times its estimate (at least a minute), but not far past the
        budget, since the box is held for about the budget and a minute more."""
        left = self.budget_s + 60 - (time.monotonic() - self.started)
        return max(30.0, min(max(60.0, 4 * cost_s), left))

    def section(self, name: str, fn, cost_s: float = 0.0):
        if time.monotonic() - self.started + cost_s > self.budget_s:
            self.result["skipped"].append(name)
            print(f"  {name}: skipped (time budget)", file=sys.stderr)
            return None
        self.save()  # what the sections before stored in the result: a stop from outside during this one keeps it
        t0, limit = time.monotonic(), self.limit_s(cost_s)
        try:
            with _time_limit(limit):
                value = fn()
        except SectionCut:
            self.result["cut"].append(name)
            print(f"  {name}: cut after {limit:.0f} s (time limit)", file=sys.stderr)
            return None
        except Exception as e:  # recorded, and the next section runs: one failure must not cost the whole box
            self.result["errors"][name] = f"{type(e).__name__}: {e}"[:800]
            print(f"  {name} FAILED: {self.result['errors'][name]}", file=sys.stderr)
            return None
        finally:
            self.save()
        print(f"  {name}: {time.monotonic() - t0:.1f} s", file=sys.stderr)
        return value

    def save(self) -> None:
        if self.path is not None:
            self.path.write_text(json.dumps(self.result, indent=1, default=str) + "\n")


@contextmanager
def _time_limit(seconds: float):
    """SIGALRM raises SectionCut in the main thread after `seconds`: at the next Python step (a CUDA call in
    progress returns first; a sleep or a wait on a subprocess is cut short). Off the main thread, no limit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def cut(signum, frame):
        raise SectionCut()

    previous = signal.signal(signal.SIGALRM, cut)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
