"""Job manifests in storage: the single source of truth that survives restarts and switched-off boxes."""

import logging
import time

from backend.contract import is_job_id, manifest_key
from backend.models import JobManifest
from backend.storage import ObjectMissing, Storage, StorageError

log = logging.getLogger("showroom.store")


class JobStore:
    def __init__(self, storage: Storage, clock=time.monotonic):
        self.storage, self.clock = storage, clock
        self.unsaved: dict[str, JobManifest] = {}  # manifests whose last write failed; retried by flush()
        self.down_until = 0.0  # after a failed write, skip writes for a moment: the caller must not stall

    def save(self, job: JobManifest, keep: bool = True) -> bool:
        """Write the manifest; on a storage outage keep it (unless `keep` is false) to retry later."""
        if self.clock() < self.down_until:
            if keep:
                self.unsaved[job.id] = job
            return False
        try:
            self.storage.put(job.manifest_key, job.model_dump_json(indent=1).encode(), "application/json")
        except StorageError as e:
            log.warning("manifest of job %s not saved (%s)%s", job.id, e, "; will retry" if keep else "")
            if keep:
                self.unsaved[job.id] = job
            self.down_until = self.clock() + 2.0
            return False
        self.unsaved.pop(job.id, None)
        return True

    def flush(self) -> None:
        """Write what an outage held back, oldest change first; stop at the first failure."""
        for job in list(self.unsaved.values()):
            if not self.save(job):
                return

    def load(self, job_id: str) -> JobManifest:
        if not is_job_id(job_id):
            raise ObjectMissing(job_id)
        return JobManifest.model_validate_json(self.storage.get(manifest_key(job_id)))

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
            except (ObjectMissing, ValueError):
                continue  # a job folder whose manifest is not written yet, or unreadable
        return found
