"""backend/jobs/service.py on real storage, catalog and manifest store; the executor records what it is given."""

import pytest

from backend.config import Settings
from backend.contract import manifest_key
from backend.errors import Conflict, ShowroomError
from backend.jobs.leases import Leases
from backend.jobs.manifests import ManifestStore
from backend.jobs.service import JobService
from backend.models import JobSpec, Product, Status
from backend.products.catalog import Catalog
from backend.storage import LocalStorage
from tests.factories import Recorder
from tests.unit.jobs.test_manifests import make_job


def test_a_batch_whose_product_is_deleted_while_it_is_written_is_queued_whole_or_not_at_all(tmp_path):
    """DELETE /v1/products/{name} landing while a batch's manifests are written: every job is queued (its images
    then fail for want of the product, as a single job's do), or none is left behind. Not: an error to the client
    and jobs stored as queued that nothing will run."""
    storage = LocalStorage(tmp_path)
    catalog = Catalog(storage)
    catalog.add_product(Product(name="mug", trigger="zwx mug"))
    store = ManifestStore(storage).start()
    executor = Recorder()
    service = JobService(Settings(storage_url=f"file://{tmp_path}"), catalog, store, executor, 64)
    create = store.create

    def create_then_delete(job):
        written = create(job)
        if catalog.products():
            catalog.delete("mug")  # the owner removes the product from another tab
        return written

    store.create = create_then_delete
    specs = [JobSpec(prompt="<product> on a table", product="mug", num_images=1, steps=2, width=64, height=64)
             for _ in range(3)]
    try:
        try:
            jobs = service.submit_batch(specs)
        except ShowroomError:
            jobs = None
        store.flush()
        left = [i for i in store.ids() if not store.was_deleted(i)]
        if jobs is None:
            assert executor.submitted == [] and left == [], "refused, yet jobs were left in storage as queued"
        else:
            assert sorted(executor.submitted) == sorted(j.id for j in jobs) == sorted(left)
    finally:
        store.close()


class Idle(Recorder):
    """An executor that holds nothing: every job it was given has ended."""

    def cancel(self, job_id):
        return False

    def holds(self, job_id):
        return False


def test_a_job_deleted_while_storage_refuses_deletes_is_removed_once_it_answers(tmp_path, monkeypatch):
    """DELETE /v1/jobs/{id} during a storage outage: the job is 404 from then on, so its objects and its index
    entries must go once storage answers again; not stay for good (listed again after a restart, or by another
    backend) because the first removal failed before the later sweeps were set up."""
    import time

    from backend.contract import job_prefix, newest_first_key, unfinished_key
    from backend.errors import NotFound
    from backend.jobs import service as js
    from backend.storage import StorageError

    class Outage(LocalStorage):
        down = False

        def delete(self, key):
            if self.down:
                raise StorageError("connection refused")
            super().delete(key)

        def delete_prefix(self, prefix):
            if self.down:
                raise StorageError("connection refused")
            return super().delete_prefix(prefix)

    monkeypatch.setattr(js, "SWEEP_AGAIN_S", (0.3,))
    storage = Outage(tmp_path)
    store = ManifestStore(storage).start()
    service = JobService(Settings(storage_url=f"file://{tmp_path}"), Catalog(storage), store, Idle(), 64)
    try:
        job = service.submit(JobSpec(prompt="a mug", num_images=1, steps=2, width=64, height=64))
        store.flush()
        storage.down = True
        try:
            service.delete(job.id)
        except StorageError:
            pass  # a 503: the client tries again
        storage.down = False
        try:
            service.delete(job.id)  # the retry
        except NotFound:
            pass
        deadline = time.monotonic() + 5
        while storage.list_files(job_prefix(job.id)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert storage.list_files(job_prefix(job.id)) == [], "the deleted job's objects stayed"
        assert not storage.exists(newest_first_key(job.id)) and not storage.exists(unfinished_key(job.id))
    finally:
        store.close()


def test_a_job_another_live_backend_runs_is_neither_canceled_nor_deleted_here(tmp_path):
    """Two backends on one bucket: what this one wrote into the job's manifest would be overwritten by the
    runner's next change (the cancel undone, a deleted job written back), so it says where the job runs."""
    storage = LocalStorage(tmp_path)
    runner_leases = Leases(storage, machine="box-a").start()
    runner, here = ManifestStore(storage).start(), ManifestStore(storage).start()
    runner.owner = runner_leases.me  # its unfinished marker names the runner
    job = make_job(2)
    try:
        assert runner.create(job) and runner.flush()

        def service() -> JobService:  # a fresh look at the leases each time (answers are kept 2 s)
            return JobService(Settings(storage_url=f"file://{tmp_path}"), Catalog(storage), here, Recorder(),
                              64, runs_elsewhere=Leases(storage, machine="box-b").runs_elsewhere)

        with pytest.raises(Conflict, match=f"runs on another backend that shares this storage .{runner_leases.me}"):
            service().cancel(job.id)
        with pytest.raises(Conflict):
            service().delete(job.id)
        assert here.load(job.id).status == Status.queued and storage.exists(manifest_key(job.id)), "unchanged"
        runner_leases.close()  # the runner stops: the job is this backend's to act on
        assert service().cancel(job.id).status == Status.canceled
    finally:
        runner_leases.close()
        runner.close()
        here.close()


def test_a_job_whose_manifest_cannot_be_read_can_still_be_deleted(tmp_path):
    storage = LocalStorage(tmp_path)
    earlier, store = ManifestStore(storage).start(), ManifestStore(storage).start()  # an earlier run, this one
    job = make_job(1)
    try:
        assert earlier.create(job) and earlier.flush()
        storage.put(manifest_key(job.id), b'{"id": "cut sho', "application/json")  # cut short, or hand-edited
        storage.put(f"jobs/{job.id}/0.png", b"png", "image/png")
        service = JobService(Settings(storage_url=f"file://{tmp_path}"), Catalog(storage), store, Recorder(), 64)
        service.delete(job.id)
        assert storage.list_files(f"jobs/{job.id}/") == [], "every object under jobs/<id>/ is removed"
    finally:
        earlier.close()
        store.close()
