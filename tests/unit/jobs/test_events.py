"""JobEvents: an executor's events become manifest changes; a terminal image never changes again."""

import pytest

from backend.gpu import executor as ev
from backend.jobs.events import JobEvents
from backend.jobs.manifests import ManifestStore
from backend.models import Status
from backend.storage import LocalStorage
from tests.unit.jobs.test_manifests import make_job


@pytest.fixture
def applied(tmp_path):
    store = ManifestStore(LocalStorage(tmp_path)).start()
    metrics = []
    events = JobEvents(store, lambda kind, info: metrics.append((kind, info)))
    job = make_job(2)
    assert store.create(job)
    yield store, events, job.id, metrics
    store.close()


def test_started_progress_and_success_are_recorded(applied):
    store, events, job_id, metrics = applied
    events(ev.ImagesStarted(job_id, (0, 1), "node-a/0"))
    events(ev.ImagesProgress(job_id, (0, 1), 3, 10))
    job = store.get(job_id)
    assert job.status == Status.running
    assert [(i.status, i.worker, i.progress.step, i.progress.steps) for i in job.images] == \
        [(Status.running, "node-a/0", 3, 10)] * 2
    events(ev.ImageSucceeded(job_id, 0))
    events(ev.ImageFailed(job_id, 1, "out of GPU memory at 64x64: try a smaller size"))
    job = store.get(job_id)
    assert [i.status for i in job.images] == [Status.succeeded, Status.failed]
    assert job.images[0].progress is None and job.images[0].finished_at
    assert job.status == Status.failed and "1 of 2 images failed: out of GPU memory" in job.error
    assert metrics == [("image", {"status": "succeeded"}), ("image", {"status": "failed"}),
                       ("job", {"status": "failed"})]


def test_events_for_a_terminal_image_change_nothing(applied):
    store, events, job_id, metrics = applied
    events(ev.ImagesCanceled(job_id, (0, 1)))
    events(ev.ImagesStarted(job_id, (0,), 1))
    events(ev.ImageSucceeded(job_id, 0))
    events(ev.ImagesRequeued(job_id, (1,)))
    job = store.get(job_id)
    assert [i.status for i in job.images] == [Status.canceled, Status.canceled] and job.status == Status.canceled
    assert [m for m in metrics if m[0] == "job"] == [("job", {"status": "canceled"})], "counted once"


def test_a_requeued_image_waits_again_without_its_worker(applied):
    store, events, job_id, _ = applied
    events(ev.ImagesStarted(job_id, (0,), 0))
    events(ev.ImagesRequeued(job_id, (0,)))
    img = store.get(job_id).images[0]
    assert (img.status, img.worker, img.started_at) == (Status.queued, None, None)


def test_progress_only_touches_running_images(applied):
    store, events, job_id, _ = applied
    events(ev.ImagesProgress(job_id, (0,), 1, 2))
    assert store.get(job_id).images[0].progress is None


def test_an_image_or_preview_landing_after_its_job_was_deleted_is_removed(applied):
    from backend.contract import image_key, job_prefix

    store, events, job_id, _ = applied
    store.flush()
    store.forget(job_id)
    store.storage.delete_prefix(job_prefix(job_id))  # the job is deleted; its batch was still running
    late_image, late_preview = image_key(job_id, 1), f"{job_prefix(job_id)}0_preview.jpg"
    store.storage.put(late_image, b"png")
    store.storage.put(late_preview, b"jpg")
    store.storage.put("products/bottle.png", b"not the job's")
    events(ev.ImagePreview(job_id, 0, late_preview))
    events(ev.ImagePreview(job_id, 0, "products/bottle.png"))  # a key outside the job is never touched
    events(ev.ImageSucceeded(job_id, 1))
    assert not store.storage.exists(late_image) and not store.storage.exists(late_preview)
    assert store.storage.exists("products/bottle.png")
