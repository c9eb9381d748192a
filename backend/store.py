"""Job manifests in storage: the single source of truth that survives restarts and switched-off boxes."""

import logging
import secrets
import time

from backend.models import JobManifest
from backend.storage import NotFound, Storage, StorageError

log = logging.getLogger("showroom.store")


def new_job_id() -> str:
    """URL-safe, sorts by creation time (fixed-width hex milliseconds), 80 random bits."""
    return f"{time.time_ns() // 1_000_000:012x}{secrets.token_hex(10)}"


def is_job_id(value: str) -> bool:
    return len(value) == 32 and all(c in "0123456789abcdef" for c in value)


class JobStore:
    def __init__(self, storage: Storage):
        self.storage = storage
        self.unsaved: dict[str, JobManifest] = {}  # manifests whose last write failed; retried by flush()

    def save(self, job: JobManifest) -> bool:
        """Write the manifest; on a storage outage keep it to retry later instead of losing the change."""
        try:
            self.storage.put(job.manifest_key, job.model_dump_json(indent=1).encode(), "application/json")
        except StorageError as e:
            log.warning("manifest of job %s not saved (%s); will retry", job.id, e)
            self.unsaved[job.id] = job
            return False
        self.unsaved.pop(job.id, None)
        return True

    def flush(self) -> None:
        for job in list(self.unsaved.values()):
            self.save(job)

    def load(self, job_id: str) -> JobManifest:
        if not is_job_id(job_id):
            raise NotFound(job_id)
        return JobManifest.model_validate_json(self.storage.get(f"jobs/{job_id}/job.json"))

    def ids(self, newest_first: bool = True) -> list[str]:
        ids = [i for i in self.storage.list_dirs("jobs/") if is_job_id(i)]
        return sorted(ids, reverse=newest_first)

    def recent(self, limit: int) -> list[JobManifest]:
        found = []
        for job_id in self.ids():
            if len(found) >= limit:
                break
            try:
                found.append(self.load(job_id))
            except (NotFound, ValueError):
                continue  # a job folder whose manifest is not written yet, or unreadable
        return found
