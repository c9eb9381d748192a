"""A `place` job deleted while its product is still being cut out: the cut-out and layout written after the
delete are removed, and nothing is sent to a GPU. Real storage, catalog, manifest store, job service and
preparer; the executor records what it is sent, and the background remover waits to be let go."""

import io
import threading

from PIL import Image

from backend.config import Settings
from backend.jobs import service as js
from backend.jobs.manifests import ManifestStore
from backend.jobs.prepare import Preparer
from backend.models import JobSpec
from backend.products.catalog import Catalog
from backend.storage import LocalStorage
from tests.factories import Recorder


def photo() -> bytes:
    """Not one flat colour: a flat photo is refused before the remover is asked."""
    out = io.BytesIO()
    Image.radial_gradient("L").convert("RGB").resize((48, 48)).save(out, format="PNG")
    return out.getvalue()


def test_a_place_job_deleted_during_its_cut_out_leaves_no_object_and_costs_no_gpu(tmp_path, monkeypatch):
    monkeypatch.setattr(js, "SWEEP_AGAIN_S", ())  # the late timed sweeps are a second net; this checks the first
    storage = LocalStorage(tmp_path)
    store = ManifestStore(storage).start()
    entered, release, laid_out = threading.Event(), threading.Event(), threading.Event()

    def slow_remover(rgb):
        entered.set()
        release.wait(10)
        return Image.new("L", rgb.size, 255)

    preparer = Preparer(storage, "u2netp")
    preparer.remover = slow_remover
    executor = Recorder()
    service = js.JobService(Settings(storage_url=f"file://{tmp_path}"), Catalog(storage), store, executor, 64,
                            preparer)
    prepared = service._prepared

    def then(*args):
        try:
            prepared(*args)
        finally:
            laid_out.set()

    monkeypatch.setattr(service, "_prepared", then)
    try:
        job = service.submit(JobSpec(prompt="a mug on a table", mode="place", num_images=1, steps=2, width=64,
                                     height=64), photo())
        assert entered.wait(10), "the cut-out did not start"
        service.delete(job.id)
        release.set()
        assert laid_out.wait(10), "the preparation did not finish"
        assert storage.list_files(f"jobs/{job.id}/") == [], "the cut-out or layout stayed under a deleted job"
        assert executor.submitted == []
    finally:
        release.set()
        store.close()
