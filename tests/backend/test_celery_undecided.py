"""A node that cannot ask storage whether an image landed leaves the decision to the backend, which makes
it once storage answers: against the real Redis stream, with the executor in this process and no node."""

import threading

from backend.config import Settings
from backend.gpu import celery_app as ca
from backend.gpu import executor as ev
from backend.gpu.celery_executor import CeleryExecutor
from backend.storage import LocalStorage, StorageError
from tests.backend.celery_parts import redis_server, wait_until  # noqa: F401 (fixture)
from tests.backend.test_scheduler import make_job


class FlakyStorage(LocalStorage):
    """Local storage that can be switched off, as a hung S3 looks to its callers."""

    def __init__(self, root):
        super().__init__(root)
        self.down = threading.Event()

    def list_files(self, prefix):
        if self.down.is_set():
            raise StorageError("S3 unreachable: read timeout")
        return super().list_files(prefix)

    def get(self, key):
        if self.down.is_set():
            raise StorageError("S3 unreachable: read timeout")
        return super().get(key)


def test_an_undecided_image_is_decided_by_what_storage_holds_once_it_answers(redis_server, tmp_path):  # noqa: F811
    storage = FlakyStorage(tmp_path / "storage")
    settings = Settings(executor="celery", broker_url=redis_server.url, model_id="undecided-test-model",
                        storage_url=f"file://{tmp_path / 'storage'}")
    events, lock = [], threading.Lock()

    def sink(event):
        with lock:
            events.append(event)

    executor = CeleryExecutor(settings, storage, on_event=sink)
    reconciles, reconcile = [], executor._reconcile
    executor._reconcile = lambda: (reconcile(), reconciles.append(1))
    executor.start()
    try:
        job = make_job(2)
        storage.put(job.manifest_key, job.model_dump_json().encode(), "application/json")
        executor.submit(job, ())
        storage.put(job.images[0].key, b"png", "image/png")  # image 0 landed before its node was lost
        storage.down.set()
        for index in (0, 1):
            ca.publish(executor.redis, ca.ImageUndecided(job.id, index, "node n1: worker lost; it was the second try"))
        wait_until(lambda: len(executor.flights[job.id].undecided) == 2, what="the undecided images were read")
        seen = len(reconciles)
        executor._reconcile_at = 0.0
        wait_until(lambda: len(reconciles) > seen, what="a reconcile ran during the outage")
        with lock:
            assert not [e for e in events if isinstance(e, (ev.ImageSucceeded, ev.ImageFailed))], events
        assert executor.holds(job.id)
        storage.down.clear()
        executor._reconcile_at = 0.0
        wait_until(lambda: not executor.holds(job.id), timeout=30, what="the images were decided")
        with lock:
            decided = [e for e in events if isinstance(e, (ev.ImageSucceeded, ev.ImageFailed))]
        assert ev.ImageSucceeded(job.id, 0) in decided, decided
        assert ev.ImageFailed(job.id, 1, "node n1: worker lost; it was the second try") in decided, decided
    finally:
        executor.stop()
