"""The scheduler against fake workers: fan-out, batching, a dying worker, a worker that cannot start, time limits."""

import threading
import time
from types import SimpleNamespace

from backend.contract import new_job_id
from backend.gpu.scheduler import Scheduler
from backend.gpu.worker_slot import MAX_RESTARTS
from backend.jobs.manifests import ManifestStore
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


def submit(sched: Scheduler, store: ManifestStore, job: JobManifest) -> None:
    assert store.create(job)  # as the job service does: the manifest exists before the work is queued
    sched.submit(job, ())


def wait_terminal(store: ManifestStore, job: JobManifest, timeout: float = 30) -> JobManifest:
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


def test_the_scheduler_keeps_the_executor_protocol(run_scheduler):
    """What the job side relies on, by behaviour: held while work remains, the queue's cost counted, a
    cancel reported as events before it returns, nothing held afterwards, a snapshot without storage."""
    from backend.gpu.executor import Executor

    sched, store = run_scheduler(1, behaviour="load_fail")  # no worker ever takes the work: it stays queued
    assert isinstance(sched, Executor)
    job = make_job(3)
    submit(sched, store, job)
    assert sched.holds(job.id) and sched.pending_images() == 3 and sched.pending_cost() == 3.0
    assert sched.cancel(job.id) is True
    assert [i.status for i in store.get(job.id).images] == [Status.canceled] * 3, "reported before cancel returns"
    assert not sched.holds(job.id) and sched.pending_cost() == 0 and sched.cancel(job.id) is False
    assert set(sched.snapshot()) == {"workers", "errors", "pending", "native_size"}


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


def test_a_lost_image_storage_cannot_tell_about_is_decided_when_storage_answers(run_scheduler):
    """Killed at its time limit during an outage: failing it blind would break "object exists iff succeeded"
    for the image that did reach storage. It stays open until storage can say."""
    from backend.storage import StorageError

    sched, store = run_scheduler(1, behaviour="upload_then_hang", timeout_s=1)
    real_exists, down = sched.storage.exists, threading.Event()
    down.set()
    asked = []

    def exists(key):
        asked.append(key)
        if down.is_set():
            raise StorageError("S3 unreachable: read timeout")
        return real_exists(key)

    sched.storage.exists = exists
    job = make_job(2)
    submit(sched, store, job)
    deadline = time.monotonic() + 30
    while len(asked) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(2.5)  # past a re-check: still down, so still undecided
    undecided = store.get(job.id)
    assert [img.status for img in undecided.images] == [Status.running, Status.running], undecided.images
    assert sched.holds(job.id), "held while undecided: recovery must not take it back meanwhile"
    down.clear()
    done = wait_terminal(store, job)
    first, second = done.images
    assert first.status == Status.succeeded and store.storage.exists(first.key), "it had landed: succeeded"
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
    assert sched.cancel(first.id) is False and not sched.holds(first.id), "a finished job is no longer held"


def test_a_dead_workers_storage_check_does_not_hold_the_lock(run_scheduler):
    """Whether a dead worker's images landed is asked of storage with no lock held: during an outage the
    S3 client's retries must not stall /health, job status or submit."""
    sched, store = run_scheduler(1, behaviour="die_once")
    asking, release = threading.Event(), threading.Event()
    real_exists = sched.storage.exists

    def slow_exists(key):
        asking.set()
        release.wait(10)
        return real_exists(key)

    sched.storage.exists = slow_exists
    job = make_job(1)
    submit(sched, store, job)
    assert asking.wait(30), "the dead worker's image is looked for in storage"
    started = time.monotonic()
    sched.snapshot(), sched.holds(job.id), sched.cancel("0" * 32)
    waited = time.monotonic() - started
    release.set()
    assert waited < 1, f"the executor's verbs waited {waited:.1f} s behind a storage call"
    assert wait_terminal(store, job).status == Status.succeeded, "retried on the fresh worker"


def test_the_bench_plans_the_batches_the_real_scheduler_makes(run_scheduler, tmp_path):
    from collections import Counter

    from backend.tools.bench_overhead import scheduler_batches

    sched, store = run_scheduler(2)
    while sum(w["state"] == "ready" for w in sched.snapshot()["workers"]) < 2:
        time.sleep(0.05)
    job = make_job(5)
    submit(sched, store, job)
    assert wait_terminal(store, job).status == Status.succeeded
    per_size = Counter(size for _, size in batches(tmp_path, job).values())
    made = sorted(size for size, images in per_size.items() for _ in range(images // size))
    assert made == sorted(scheduler_batches(5, 2)) == [2, 3]


def test_a_training_stopped_while_it_waits_is_dropped_and_fails_with_the_reason(tmp_path):
    from backend.gpu import executor as ev
    from backend.gpu.messages import TrainTask

    events = []
    settings = SimpleNamespace(max_batch=8, image_timeout_s=30, model_id="fake")
    sched = Scheduler(settings, LocalStorage(tmp_path), 1, on_event=events.append, worker_target=run_fake_worker)
    task = TrainTask(task_id=0, training_id="t1", trigger="zxq", photo_keys=("a.png",), steps=10, rank=4,
                     resolution=64, checkpoint_every=5)
    sched.train(task)  # not started: no worker takes it, as while another training holds the GPU
    sched.stop_training("t2", "not this one")
    assert events == [] and len(sched.trainings) == 1
    sched.stop_training("t1", "product 'jug' was deleted while it trained")
    assert events == [ev.TrainingFailed("t1", "product 'jug' was deleted while it trained")]
    assert not sched.trainings, "it will not start later"
