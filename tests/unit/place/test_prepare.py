"""Laying a `place` job out before any GPU time: what the shop owner reads when it cannot be done. Real storage,
catalog, manifest store, job service and preparer; the executor records what it is sent."""

import time

from backend.config import Settings
from backend.contract import packshot_key
from backend.jobs.manifests import ManifestStore
from backend.jobs.prepare import Preparer
from backend.jobs.service import JobService
from backend.models import JobSpec, Product
from backend.products.catalog import Catalog
from backend.storage import LocalStorage
from tests.factories import Recorder, packshot


def wait_terminal(store: ManifestStore, job_id: str):
    deadline = time.monotonic() + 10
    while not (job := store.get(job_id)).status.is_terminal() and time.monotonic() < deadline:
        time.sleep(0.02)
    return job


def test_place_job_whose_packshot_is_gone_fails_saying_so(tmp_path):
    storage = LocalStorage(tmp_path)
    store = ManifestStore(storage).start()
    catalog, executor = Catalog(storage), Recorder()
    service = JobService(Settings(storage_url=f"file://{tmp_path}"), catalog, store, executor, 64,
                         Preparer(storage, "u2netp"))
    try:
        catalog.add_product(Product(name="bottle", trigger="sks bottle"), packshot=packshot())
        storage.delete(packshot_key("bottle"))  # deleted while the job waits (DELETE /v1/products, in its last step)
        job = service.submit(JobSpec(prompt="<product> on a table", product="bottle", mode="place", num_images=1,
                                     steps=2, width=64, height=64), None)
        job = wait_terminal(store, job.id)
        assert job.status == "failed" and executor.submitted == []
        assert "product 'bottle' has no packshot any more" in job.error, job.error
        assert "send a photo of the product with the job" in job.images[0].error
    finally:
        store.close()
