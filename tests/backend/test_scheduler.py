"""The scheduler against fake workers: fan-out, batching, a dying worker, a worker that cannot start, time limits."""

import time
from types import SimpleNamespace

import pytest

from backend.contract import new_job_id
from backend.gpu.scheduler import MAX_RESTARTS, Scheduler
from backend.jobs.manifests import JobStore
from backend.models import ImageRecord, JobManifest, ResolvedSpec, Status, now
from backend.storage import LocalStorage
from tests.backend.fake_worker import run_fake_worker


def make_job(n: int) -> JobManifest:
    job_id = new_job_id()
    spec = ResolvedSpec(prompt="p", negative_prompt="", product=None, template=None, loras=[], num_images=n,
                        steps=2, guidance_scale=7.5, width=64, height=64, seed=0, strength=0.5)
    return JobManifest(id=job_id, created_at=now(), updated_at=now(), status=Status.queued, spec=spec,
                       input_key=None, images=[ImageRecord(index=i, key=f"jobs/{job_id}/{i}.png", seed=i)
                                               for i in range(n)])


@pytest.fixture
def run_scheduler(tmp_path):
    started = []

    def start(workers: int, behaviour: str = "ok", timeout_s: float = 30, step_s: float = 0.005,
              store: JobStore | None = None):
        store = store or JobStore(LocalStorage(tmp_path / "storage"))
        settings = SimpleNamespace(behaviour=behaviour, marker_dir=str(tmp_path), max_batch=8, step_s=step_s,
                                   image_timeout_s=timeout_s, model_id="fake", storage_dir=str(store.storage.root))
        sched = Scheduler(settings, store, workers, worker_target=run_fake_worker)
        sched.start()
        started.append(sched)
        return sched, store

    yield start
    for sched in started:
        sched.stop(timeout=5)


def submit(sched: Scheduler, store: JobStore, job: JobManifest) -> None:
    store.save(job)  # as the job service does: the manifest exists before the work is queued
    sched.submit(job, ())


def wait_terminal(store: JobStore, job: JobManifest, timeout: float = 30) -> JobManifest:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stored = store.load(job.id)
        if stored.status.is_terminal():
            return stored
        time.sleep(0.05)
    raise TimeoutError(f"job not terminal: {store.load(job.id)}")


def batches(tmp_path, job) -> dict[int, tuple[int, int]]:
    """index -> (worker, batch size), from the markers the fake leaves for each image."""
    found = {}
    for p in tmp_path.glob(f"{job.id}-*"):
        _, index, worker, size = p.name.rsplit("-", 3)
        found[int(index)] = (int(worker[1:]), int(size[1:]))
    return found


def test_the_scheduler_is_an_executor(run_scheduler):
    from backend.gpu.executor import Executor

    sched, _ = run_scheduler(1)
    assert isinstance(sched, Executor)
    assert set(sched.snapshot()) == {"workers", "errors", "pending", "native_size", "unsaved"}


def test_four_images_on_four_workers_run_one_each(run_scheduler, tmp_path):
    sched, store = run_scheduler(4)
    job = make_job(4)
    while sum(w["state"] == "ready" for w in sched.snapshot()["workers"]) < 4:
        time.sleep(0.05)
    submit(sched, store, job)
    assert wait_terminal(store, job).status == Status.succeeded
    assert sorted(batches(tmp_path, job).values()) == [(0, 1), (1, 1), (2, 1), (3, 1)]


def test_images_on_one_worker_are_one_batch(run_scheduler, tmp_path):
    sched, store = run_scheduler(1)
    job = make_job(5)
    submit(sched, store, job)
    assert wait_terminal(store, job).status == Status.succeeded
    assert set(batches(tmp_path, job).values()) == {(0, 5)}


def test_a_worker_that_dies_is_replaced_and_its_images_retried(run_scheduler, tmp_path):
    sched, store = run_scheduler(1, behaviour="die_once")
    job = make_job(3)
    submit(sched, store, job)
    done = wait_terminal(store, job)
    assert done.status == Status.succeeded, done
    assert all(img.status == Status.succeeded for img in done.images)


def test_images_fail_with_the_reason_after_a_second_death(run_scheduler):
    sched, store = run_scheduler(2, behaviour="always_die")
    job = make_job(2)
    submit(sched, store, job)
    done = wait_terminal(store, job)
    assert done.status == Status.failed
    for img in done.images:
        assert img.status == Status.failed and "died (exit code 9)" in img.error and "second try" in img.error
    assert "images failed" in done.error


def test_a_worker_that_leaves_after_a_device_error_is_replaced_and_says_so(run_scheduler):
    sched, store = run_scheduler(1, behaviour="device_error")
    job = make_job(1)
    submit(sched, store, job)
    done = wait_terminal(store, job)
    assert "worker 0 hit a device error and was restarted; it was the second try" == done.images[0].error


def test_a_model_that_cannot_load_fails_the_queue_instead_of_keeping_it(run_scheduler, tmp_path):
    sched, store = run_scheduler(1, behaviour="load_fail")
    job = make_job(2)
    submit(sched, store, job)
    done = wait_terminal(store, job, timeout=60)
    assert done.status == Status.failed
    assert all("out of memory" in img.error for img in done.images)
    assert sched.hopeless() and sched.snapshot()["workers"][0]["state"] == "dead"
    assert len(list(tmp_path.glob("load-0-*"))) == MAX_RESTARTS, "tried again, then given up on"


def test_an_image_past_its_time_limit_fails_and_the_worker_is_replaced(run_scheduler):
    sched, store = run_scheduler(1, behaviour="hang", timeout_s=1)
    job = make_job(1)
    submit(sched, store, job)
    done = wait_terminal(store, job)
    assert done.images[0].status == Status.failed and "timed out after 1 s" in done.images[0].error


def test_an_image_stored_before_its_worker_was_killed_is_a_success_not_a_failure(run_scheduler):
    sched, store = run_scheduler(1, behaviour="upload_then_hang", timeout_s=1)
    job = make_job(2)
    submit(sched, store, job)
    done = wait_terminal(store, job)
    first, second = done.images
    assert first.status == Status.succeeded and store.storage.exists(first.key), "object exists: succeeded"
    assert second.status == Status.failed and "timed out" in second.error and not store.storage.exists(second.key)


def test_cancel_interrupts_the_running_batch_and_drops_the_queued(run_scheduler):
    sched, store = run_scheduler(1, step_s=0.05)
    first, second = make_job(4), make_job(2)
    submit(sched, store, first)
    submit(sched, store, second)
    while store.load(first.id).status != Status.running:
        time.sleep(0.02)
    sched.cancel(first.id)
    sched.cancel(second.id)
    for job in (first, second):
        done = wait_terminal(store, job)
        assert done.status == Status.canceled
    assert sched.cancel(first.id) is None, "a finished job is no longer active"


def test_no_storage_check_for_a_dead_workers_images_while_storage_has_just_failed(run_scheduler):
    """The check runs under the scheduler's lock: during an outage the S3 client's retries would hold
    every request (health, job status, submit) for as long as they last."""
    sched, store = run_scheduler(1)
    asked = []
    store.storage.exists = lambda key: asked.append(key) or True
    assert sched._already_stored("jobs/x/0.png") and asked == ["jobs/x/0.png"]
    store.down_until = store.clock() + 60  # a manifest write failed a moment ago
    assert not sched._already_stored("jobs/x/1.png") and asked == ["jobs/x/0.png"], "storage not asked"
