"""Fixtures the backend tests share: the real scheduler on fake workers."""

from types import SimpleNamespace

import pytest

from backend.gpu.scheduler import Scheduler
from backend.jobs.events import JobEvents
from backend.jobs.manifests import ManifestStore
from backend.storage import LocalStorage
from tests.backend.fake_worker import run_fake_worker


@pytest.fixture
def run_scheduler(tmp_path):
    started = []

    def start(workers: int, behaviour: str = "ok", timeout_s: float = 30, step_s: float = 0.005,
              store: ManifestStore | None = None):
        store = store or ManifestStore(LocalStorage(tmp_path / "storage"))
        if store._thread is None:
            store.start()
        settings = SimpleNamespace(behaviour=behaviour, marker_dir=str(tmp_path), max_batch=8, step_s=step_s,
                                   image_timeout_s=timeout_s, model_id="fake", storage_dir=str(store.storage.root))
        sched = Scheduler(settings, store.storage, workers, on_event=JobEvents(store), worker_target=run_fake_worker)
        sched.start()
        started.append((sched, store))
        return sched, store

    yield start
    for sched, store in started:
        sched.stop(timeout=5)
        store.close(timeout=5)
