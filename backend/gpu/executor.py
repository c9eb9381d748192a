"""The seam between the API and whatever makes the images.

`Scheduler` (this box's GPUs, one worker process each) is the one executor today. A second one,
spanning several GPU boxes, implements the same verbs; the job service, the upscale service,
start-up recovery and the routes use nothing else.
"""

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from backend.models import JobManifest


@runtime_checkable
class Executor(Protocol):
    native_size: int | None  # the model's native size, once a worker has loaded it

    def start(self) -> None: ...

    def stop(self, timeout: float = 10) -> None: ...

    def submit(self, job: JobManifest, loras: tuple) -> None:
        """Take a job whose manifest is already in storage; make its images not yet terminal."""

    def cancel(self, job_id: str) -> JobManifest | None:
        """Cancel a job it holds; None when it holds no such job."""

    def active(self, job_id: str) -> JobManifest | None:
        """The live manifest of a job it holds, or None."""

    def mutate(self, job_id: str, change: Callable[[JobManifest], None]) -> JobManifest:
        """Apply `change` to a job's manifest (held or finished) and persist it: the one writer."""

    def pending_images(self) -> int: ...

    def hopeless(self) -> bool:
        """True when no worker can ever start: new jobs are refused instead of queued forever."""

    def last_error(self) -> str: ...

    def snapshot(self) -> dict:
        """For /health and /metrics: {"workers": [{"id", "device", "state"}], "errors", "pending",
        "native_size", "unsaved"}."""
