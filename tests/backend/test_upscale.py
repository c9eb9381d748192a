"""Choosing an upscaling engine, and the service that runs them: when an upscale shows running, and a
local upscaler process that dies or hangs."""

import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest

from backend.jobs.manifests import ManifestStore
from backend.models import Status
from backend.storage import LocalStorage
from backend.upscale.engines import make_upscaler
from backend.upscale.local_engine import LocalUpscaler
from backend.upscale.replicate_engine import REPLICATE_VERSION, ReplicateUpscaler
from backend.upscale.service import UpscaleService
from tests.backend.test_scheduler import make_job
from tests.fake_replicate import FakeReplicate

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def fake():
    server = FakeReplicate().start()
    yield server
    server.stop()


# --- choosing an engine ---

def test_make_upscaler_by_kind(fake):
    assert make_upscaler("off") is None
    engine = make_upscaler("replicate", replicate_api_token=fake.token, replicate_base_url=fake.url,
                           replicate_task="classical_sr")
    assert isinstance(engine, ReplicateUpscaler) and engine.version == REPLICATE_VERSION
    local = make_upscaler("local", local_model_id="some/model", device="cpu")
    assert isinstance(local, LocalUpscaler) and local.model_id == "some/model"
    with pytest.raises(ValueError, match="REPLICATE_API_TOKEN"):
        make_upscaler("replicate", replicate_api_token=None)
    with pytest.raises(ValueError, match="version"):
        make_upscaler("replicate", replicate_api_token="t", replicate_model="someone/other-sr")
    with pytest.raises(ValueError, match="got 'esrgan'"):
        make_upscaler("esrgan")


def test_module_imports_neither_torch_nor_transformers():
    code = ("import sys, backend.upscale.engines; heavy = {'torch', 'transformers'} & set(sys.modules); "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


# --- the service: where upscales run and what their records say ---

class ManifestBook:
    """The parts of the scheduler and job service UpscaleService uses: manifests kept in memory."""

    def __init__(self, job):
        self.jobs, self.lock = {job.id: job}, threading.Lock()

    def get(self, job_id: str):
        with self.lock:
            return self.jobs[job_id].model_copy(deep=True)

    def update(self, job_id: str, change):
        with self.lock:
            change(self.jobs[job_id])
            return self.jobs[job_id].model_copy(deep=True)

    def upscale(self, job_id: str, index: int):
        return self.get(job_id).images[index].upscale

    def was_deleted(self, job_id: str) -> bool:
        return False


def succeeded_job(images: int):
    job = make_job(images)
    for image in job.images:
        image.succeeded()
    job.refresh()
    return job


def wait_until(condition, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def test_upscale_shows_running_only_once_a_pool_thread_takes_it_up():
    job = succeeded_job(2)
    book = ManifestBook(job)
    service = UpscaleService(SimpleNamespace(active_upscaler="replicate"), book, book)
    service.pool.shutdown()
    service.pool = ThreadPoolExecutor(1)  # one at a time: the second waits behind the first
    gate = threading.Event()
    service.work = lambda settings, source, target: gate.wait(10)
    try:
        service.request(job.id, 0)
        service.request(job.id, 1)
        wait_until(lambda: book.upscale(job.id, 0).status == Status.running)
        time.sleep(0.1)
        assert book.upscale(job.id, 1).status == Status.queued, "waiting behind another is not running"
        gate.set()
        wait_until(lambda: [book.upscale(job.id, i).status for i in (0, 1)] == [Status.succeeded] * 2)
    finally:
        gate.set()
        service.close()


def test_an_upscale_that_ends_after_its_job_was_deleted_leaves_nothing_behind(tmp_path):
    storage = LocalStorage(tmp_path)
    store = ManifestStore(storage).start()
    job = succeeded_job(1)
    assert store.create(job)
    service = UpscaleService(SimpleNamespace(active_upscaler="replicate"), None, store)
    started, gate = threading.Event(), threading.Event()

    def work(settings, source, target):  # a Replicate upscale still under way when the job is deleted
        started.set()
        gate.wait(10)
        storage.put(target, b"\x89PNG upscaled", "image/png")

    service.work = work
    try:
        key = service.request(job.id, 0)
        assert started.wait(10)
        assert store.flush(5)  # the running record is written: the writer has nothing left to put back
        store.forget(job.id)  # what JobService.delete does, its sweeps included
        storage.delete_prefix(f"jobs/{job.id}/")
        gate.set()
        wait_until(lambda: not service.in_flight())
        assert not storage.exists(key), "the upscale landed under a deleted job and stayed"
        assert storage.list_files(f"jobs/{job.id}/") == []
    finally:
        gate.set()
        service.close()
        store.close()


def local_service(run_scheduler, behaviour: str, timeout_s: float = 60):
    """The upscale service on the real scheduler, whose fake workers run upscales as the real ones do."""
    sched, store = run_scheduler(1, behaviour=behaviour, timeout_s=timeout_s)
    job = succeeded_job(2)
    assert store.create(job)
    return UpscaleService(SimpleNamespace(active_upscaler="local"), sched, store), store, job


def upscale_of(store, job, index):
    return store.get(job.id).images[index].upscale


def test_a_local_upscale_runs_on_a_gpu_worker_of_the_executor(run_scheduler):
    service, store, job = local_service(run_scheduler, "ok")
    try:
        key = service.request(job.id, 0)
        wait_until(lambda: upscale_of(store, job, 0).status.is_terminal())
        assert upscale_of(store, job, 0).status == Status.succeeded
        assert store.storage.get(key) == b"\x89PNG upscaled by worker 0"
    finally:
        service.close()


def test_a_local_upscale_whose_worker_dies_fails_with_the_reason_and_the_next_runs_on_a_fresh_worker(run_scheduler):
    service, store, job = local_service(run_scheduler, "upscale_dies_once")
    try:
        service.request(job.id, 0)
        wait_until(lambda: upscale_of(store, job, 0).status.is_terminal())
        record = upscale_of(store, job, 0)
        assert record.status == Status.failed and "worker 0 died (exit code 9)" in record.error
        service.request(job.id, 1)
        wait_until(lambda: upscale_of(store, job, 1).status.is_terminal())
        assert upscale_of(store, job, 1).status == Status.succeeded
        service.request(job.id, 0)  # the failed one may be asked for again, and now works
        wait_until(lambda: upscale_of(store, job, 0).status == Status.succeeded)
    finally:
        service.close()


def test_a_local_upscale_that_hangs_is_stopped_at_its_limit_and_the_next_one_runs(run_scheduler):
    service, store, job = local_service(run_scheduler, "upscale_hangs_once", timeout_s=2)
    try:
        service.request(job.id, 0)
        wait_until(lambda: upscale_of(store, job, 0).status.is_terminal(), timeout=30)
        record = upscale_of(store, job, 0)
        assert record.status == Status.failed and "timed out after 2 s" in record.error
        service.request(job.id, 1)
        wait_until(lambda: upscale_of(store, job, 1).status.is_terminal(), timeout=30)
        assert upscale_of(store, job, 1).status == Status.succeeded
    finally:
        service.close()
