"""Idempotency-Key when storage fails half-way through a submission: a retry never starts a second
job, and a first try that stopped before its manifest never blocks the retry. The job service with a
real local store that can be made to fail, and a scheduler that only counts."""

import threading
import time
from types import SimpleNamespace

import pytest

from backend.config import Settings
from backend.errors import InvalidRequest, Unavailable
from backend.jobs.manifests import ManifestStore
from backend.jobs.service import JobService
from backend.models import JobSpec
from backend.products.catalog import Catalog
from backend.storage import LocalStorage, StorageError


class FailingPuts(LocalStorage):
    """Fails the next write whose key ends with `fail_next`."""

    fail_next: str | None = None

    def put(self, key, data, content_type="application/octet-stream"):
        if self.fail_next and key.endswith(self.fail_next):
            self.fail_next = None
            raise StorageError("connection reset")
        super().put(key, data, content_type)


class CountingScheduler:
    native_size = 64

    def __init__(self):
        self.submitted = []

    def hopeless(self):
        return False

    def pending_images(self):
        return 0

    def pending_cost(self):
        return 0.0

    def submit(self, job, loras):
        self.submitted.append(job.id)

    def holds(self, job_id):
        return False


@pytest.fixture
def service(tmp_path, monkeypatch):
    monkeypatch.setenv("STORAGE_URL", f"file://{tmp_path}")
    storage = FailingPuts(tmp_path)
    scheduler = CountingScheduler()
    store = ManifestStore(storage)
    jobs = JobService(Settings(), Catalog(storage), store, scheduler, 64)
    return SimpleNamespace(jobs=jobs, storage=storage, executor=scheduler)


SPEC = JobSpec(prompt="a lamp", num_images=1, steps=2)


def test_a_manifest_write_that_fails_lets_the_retry_start_the_job_once(service):
    service.storage.fail_next = "job.json"
    with pytest.raises(Unavailable):
        service.jobs.submit(SPEC, idempotency_key="order-7", client="c")
    assert service.executor.submitted == [], "nothing queued, as the 503 says"

    job = service.jobs.submit(SPEC, idempotency_key="order-7", client="c")
    again = service.jobs.submit(SPEC, idempotency_key="order-7", client="c")
    assert again.id == job.id and service.executor.submitted == [job.id]


def test_the_clean_up_of_a_failed_submit_that_comes_after_its_retry_leaves_the_retrys_record(service, monkeypatch):
    """The clean-up runs in the background: a retry may have written the key's record again, for its own job,
    by the time it gets there. Removing that record would let a third try start a second job."""
    later = []
    monkeypatch.setattr(service.jobs, "_discard_later", lambda job, record: later.append((job, record)))
    service.storage.fail_next = "job.json"
    with pytest.raises(Unavailable):
        service.jobs.submit(SPEC, idempotency_key="order-9", client="c")
    job = service.jobs.submit(SPEC, idempotency_key="order-9", client="c")
    [(failed, record)] = later
    service.jobs._discard(failed, record)  # the first try's clean-up, late
    again = service.jobs.submit(SPEC, idempotency_key="order-9", client="c")
    assert again.id == job.id and service.executor.submitted == [job.id]


def test_a_record_write_that_fails_starts_nothing(service):
    service.storage.put = _fail_keys_under(service.storage, "idempotency/")
    with pytest.raises(StorageError):
        service.jobs.submit(SPEC, idempotency_key="order-8", client="c")
    assert service.executor.submitted == [] and not service.storage.list_dirs("jobs/"), "no job, no manifest"


def _fail_keys_under(storage, prefix):
    put = storage.put

    def failing(key, data, content_type="application/octet-stream"):
        if key.startswith(prefix):
            raise StorageError("connection reset")
        put(key, data, content_type)
    return failing


def test_the_same_key_sent_eight_times_at_once_starts_one_job(service):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        jobs = list(pool.map(lambda _: service.jobs.submit(SPEC, idempotency_key="order-9", client="c"), range(8)))
    assert len({job.id for job in jobs}) == 1 and len(service.executor.submitted) == 1
    other = service.jobs.submit(SPEC, idempotency_key="order-9", client="another client")
    assert other.id != jobs[0].id, "keys are per client"


def test_a_key_sent_again_with_another_request_is_refused_and_starts_nothing(service):
    first = service.jobs.submit(SPEC, idempotency_key="order-10", client="c")
    same = JobSpec.model_validate_json(SPEC.model_dump_json(indent=2))  # the same spec, other JSON spacing
    assert service.jobs.submit(same, idempotency_key="order-10", client="c").id == first.id
    with pytest.raises(InvalidRequest, match=f"first sent with another request .job {first.id}"):
        service.jobs.submit(SPEC.model_copy(update={"prompt": "a chair"}), idempotency_key="order-10", client="c")
    with pytest.raises(InvalidRequest, match="another request"):
        service.jobs.submit(SPEC, b"a photo now", idempotency_key="order-10", client="c")
    assert service.executor.submitted == [first.id], "neither started a job"
    record = service.jobs._idem_key("order-11", "c")
    service.storage.put(record, first.id.encode(), "text/plain")  # a record kept by an earlier version
    assert service.jobs.submit(SPEC, idempotency_key="order-11", client="c").id == first.id, "read as before"


class StoredThenFailed(FailingPuts):
    """The next manifest write stores the object and then fails, as a timeout after the write does."""

    def put(self, key, data, content_type="application/octet-stream"):
        if self.fail_next and key.endswith(self.fail_next):
            self.fail_next = None
            LocalStorage.put(self, key, data, content_type)
            raise StorageError("read timed out")
        super().put(key, data, content_type)


def test_a_manifest_stored_despite_its_error_is_removed_so_the_retry_starts_a_job_that_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("STORAGE_URL", f"file://{tmp_path}")
    storage, scheduler = StoredThenFailed(tmp_path), CountingScheduler()
    jobs = JobService(Settings(), Catalog(storage), ManifestStore(storage),
                      scheduler, 64)
    storage.fail_next = "job.json"
    cleaned, delete = threading.Event(), storage.delete
    storage.delete = lambda key: (cleaned.wait(10), delete(key))[1]  # the clean-up waits on a slow storage
    with pytest.raises(Unavailable):
        jobs.submit(SPEC, idempotency_key="order-9", client="c")
    job = jobs.submit(SPEC, idempotency_key="order-9", client="c")  # at once: before the clean-up has run
    cleaned.set()
    assert scheduler.submitted == [job.id], "the retry's job is the one queued"

    def manifests() -> list[str]:
        return [d for d in storage.list_dirs("jobs/") if storage.exists(f"jobs/{d}/job.json")]

    deadline = time.monotonic() + 10  # the clean-up runs beside the answer, in the background
    while manifests() != [job.id] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert manifests() == [job.id], "no manifest left that nothing will ever run"
