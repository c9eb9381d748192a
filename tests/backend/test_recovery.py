"""Taking back an earlier run's unfinished work: with the real scheduler and fake workers, on a store
that can be made to fail. Each unfinished job is queued again exactly once, however the scan goes."""

import time
from collections import Counter
from concurrent.futures import Future
from types import SimpleNamespace

from backend.jobs.manifests import ManifestStore
from backend.jobs.recovery import Recovery, recover
from backend.models import Status, UpscaleRecord
from backend.storage import LocalStorage, StorageError
from backend.upscale.service import UpscaleService
from tests.backend.test_scheduler import make_job, wait_terminal

NO_LORAS = SimpleNamespace(loras_for=lambda spec: ())


class FlakyStorage(LocalStorage):
    """A local store that is down while `down` is set, or fails to read the keys in `unreadable`."""

    def __init__(self, root):
        super().__init__(root)
        self.down, self.unreadable = False, set()

    def _check(self, key: str = "") -> None:
        if self.down or key in self.unreadable:
            raise StorageError("connection refused")

    def get(self, key):
        self._check(key)
        return super().get(key)

    def put(self, key, data, content_type="application/octet-stream"):
        self._check()
        return super().put(key, data, content_type)

    def list_dirs(self, prefix):
        self._check()
        return super().list_dirs(prefix)


class CountingScheduler:
    """The real scheduler, with a count of what is submitted to it."""

    def __init__(self, scheduler):
        self.scheduler, self.submitted = scheduler, Counter()

    def submit(self, job, loras):
        self.submitted[job.id] += 1
        self.scheduler.submit(job, loras)

    def holds(self, job_id):
        return self.scheduler.holds(job_id)

    def cancel(self, job_id):
        return self.scheduler.cancel(job_id)


def persist(store: ManifestStore, job) -> None:
    """Write a manifest as an earlier run's writer left it (this run's store has never seen the job)."""
    store.storage.put(job.manifest_key, job.model_dump_json().encode(), "application/json")


def left_by_a_crash(store: ManifestStore, images: int):
    """A job as a run killed mid-work leaves it: one image done, one running, the rest queued."""
    job = make_job(images)
    job.images[0].succeeded()
    job.images[1].started(worker=0)
    job.refresh()
    persist(store, job)
    return job


def test_a_boot_while_storage_is_down_takes_back_the_earlier_work_once_storage_answers(run_scheduler, tmp_path):
    storage = FlakyStorage(tmp_path / "flaky")
    sched, store = run_scheduler(1, store=ManifestStore(storage))
    earlier = left_by_a_crash(store, 3)
    counting = CountingScheduler(sched)
    storage.down = True
    recovery = Recovery(store, counting, NO_LORAS, delays_s=(0.05,)).start()
    time.sleep(0.3)
    assert not recovery.done.is_set() and not counting.submitted, "nothing can be read yet"

    mine = make_job(2)  # submitted to this run while storage is down: held, and not "taken back"
    storage.down = False
    assert store.create(mine)
    storage.down = True
    counting.submit(mine, ())
    storage.down = False
    assert recovery.done.wait(5), "the scan is tried again until storage answers"
    recovery.close()

    finished = wait_terminal(store, earlier)
    assert finished.status == Status.succeeded and all(i.status == Status.succeeded for i in finished.images)
    assert counting.submitted == {earlier.id: 1, mine.id: 1}, "each job queued exactly once"
    assert wait_terminal(store, mine).status == Status.succeeded


def test_a_scan_cut_short_by_storage_resumes_without_queueing_twice(run_scheduler, tmp_path):
    storage = FlakyStorage(tmp_path / "flaky")
    sched, store = run_scheduler(1, store=ManifestStore(storage))
    older, newer = left_by_a_crash(store, 2), left_by_a_crash(store, 2)
    counting = CountingScheduler(sched)
    booted_us = time.time_ns() // 1000
    mine = make_job(1)  # this run's own, its manifest written and its submit a moment away: not ours to take
    assert store.create(mine)

    assert store.build_index()  # the index of jobs written before it existed, once
    storage.unreadable = {newer.manifest_key}  # the oldest first: `older` is taken back, then the read fails
    assert recover(store, counting, NO_LORAS, booted_us=booted_us) is None
    assert counting.submitted == {older.id: 1}

    storage.unreadable = set()
    assert recover(store, counting, NO_LORAS, booted_us=booted_us) == 1
    assert recover(store, counting, NO_LORAS, booted_us=booted_us) == 0, \
        "both are held or done: a third scan adds nothing"
    assert counting.submitted == {newer.id: 1, older.id: 1}, "this run's own job is left to its submitter"
    assert wait_terminal(store, older).status == wait_terminal(store, newer).status == Status.succeeded


def test_an_image_stored_just_before_the_crash_is_kept_not_made_again(run_scheduler, tmp_path):
    sched, store = run_scheduler(1)
    job = left_by_a_crash(store, 3)
    store.storage.put(job.images[1].key, b"\x89PNG made before the crash", "image/png")
    assert recover(store, CountingScheduler(sched), NO_LORAS, booted_us=time.time_ns() // 1000) == 1
    done = wait_terminal(store, job)
    assert [i.status for i in done.images] == [Status.succeeded] * 3
    assert store.storage.get(job.images[1].key) == b"\x89PNG made before the crash"
    assert {p.name.split("-")[1] for p in tmp_path.glob(f"{job.id}-*")} == {"2"}, "only the unmade image is made"


def test_a_job_whose_manifest_is_unreadable_is_left_and_the_rest_are_taken_back(run_scheduler, tmp_path):
    sched, store = run_scheduler(1)
    broken, fine = left_by_a_crash(store, 2), left_by_a_crash(store, 2)
    store.storage.put(broken.manifest_key, b"{not json", "application/json")
    counting = CountingScheduler(sched)
    assert recover(store, counting, NO_LORAS, booted_us=time.time_ns() // 1000) == 1
    assert counting.submitted == {fine.id: 1}
    assert store.storage.get(broken.manifest_key) == b"{not json", "left for a person to look at"


class RecordingPool:
    def __init__(self):
        self.futures = []

    def submit(self, fn, *args):
        self.futures.append(Future())
        return self.futures[-1]

    def shutdown(self, **_):
        pass


def test_an_upscale_left_running_is_started_once_however_often_it_is_resumed(run_scheduler):
    sched, store = run_scheduler(1)
    job = make_job(1)
    job.images[0].succeeded()
    job.images[0].upscale = UpscaleRecord(key=f"jobs/{job.id}/0_x4.png", status=Status.running)
    job.refresh()
    persist(store, job)
    service = UpscaleService(SimpleNamespace(active_upscaler="replicate"), sched, store)
    service.pool = RecordingPool()

    service.resume(store.get(job.id))
    service.resume(store.get(job.id))  # a second scan, or a click on "upscale" meanwhile
    assert len(service.pool.futures) == 1

    service.pool.futures[0].set_result(None)
    assert store.get(job.id).images[0].upscale.status == Status.succeeded
    job = store.get(job.id)
    job.images[0].upscale.status = Status.running  # left unfinished again by a later crash
    service.resume(job)
    assert len(service.pool.futures) == 2, "once finished, the same image may be upscaled again"


class ProductsDown:
    """A catalog whose product records cannot be read while `down` is set."""

    def __init__(self):
        self.down = True

    def loras_for(self, spec):
        if self.down:
            raise StorageError("read timed out")
        return ()


def test_a_product_record_that_cannot_be_read_yet_makes_the_scan_try_again(run_scheduler):
    sched, store = run_scheduler(1)
    job = left_by_a_crash(store, 2)
    counting, products = CountingScheduler(sched), ProductsDown()
    recovery = Recovery(store, counting, products, delays_s=(0.05,)).start()  # start-up does not fail
    assert not recovery.done.is_set() and not counting.submitted
    assert store.load(job.id).images[1].status == Status.running, "nothing decided while the product is unknown"
    products.down = False
    assert recovery.done.wait(5)
    recovery.close()
    assert counting.submitted == {job.id: 1}
    assert wait_terminal(store, job).status == Status.succeeded


def test_a_corrupt_product_record_fails_the_images_it_would_make_with_the_reason(run_scheduler, tmp_path):
    from backend.jobs.service import JobService
    from backend.models import Product
    from backend.products.catalog import Catalog

    sched, store = run_scheduler(1)
    catalog = Catalog(store.storage)
    catalog.add_product(Product(name="mug", trigger="sks mug"), b"weights")
    job = make_job(2)
    job.spec.product = "mug"
    persist(store, job)
    store.storage.put("products/mug.json", b"{cut off", "application/json")
    jobs = JobService(SimpleNamespace(), catalog, store, sched, 64)
    assert recover(store, CountingScheduler(sched), jobs, booted_us=time.time_ns() // 1000) == 0
    failed = store.get(job.id)
    assert failed.status == Status.failed
    assert {i.error for i in failed.images} == {
        "the backend restarted and product 'mug' has an unreadable record; add it again with POST /v1/products"}


class FailingAtOncePool:
    """Like a pool whose upscale fails before `submit` even returns (a wrong Replicate token)."""

    def submit(self, fn, *args):
        future = Future()
        future.set_exception(RuntimeError("invalid token"))
        return future

    def shutdown(self, **_):
        pass


def test_an_upscale_that_fails_at_once_on_a_job_taken_back_keeps_its_reason(run_scheduler):
    sched, store = run_scheduler(1)
    job = left_by_a_crash(store, 3)
    job.images[0].upscale = UpscaleRecord(key=f"jobs/{job.id}/0_x4.png", status=Status.queued)
    persist(store, job)
    service = UpscaleService(SimpleNamespace(active_upscaler="replicate"), sched, store)
    service.pool = FailingAtOncePool()
    assert recover(store, CountingScheduler(sched), NO_LORAS, service, booted_us=time.time_ns() // 1000) == 1
    done = wait_terminal(store, job)
    assert done.status == Status.succeeded
    assert (done.images[0].upscale.status, done.images[0].upscale.error) == (Status.failed, "invalid token")


def test_a_cancel_before_recovery_takes_a_job_back_sticks(run_scheduler):
    from backend.jobs.service import JobService

    sched, store = run_scheduler(1)
    job = left_by_a_crash(store, 3)
    jobs = JobService(SimpleNamespace(), None, store, sched, 64)
    canceled = jobs.cancel(job.id)  # storage was down at boot: the job is not held yet
    assert canceled.status == Status.canceled
    assert [i.status for i in store.get(job.id).images] == [Status.succeeded, Status.canceled, Status.canceled]
    counting = CountingScheduler(sched)
    assert recover(store, counting, NO_LORAS, booted_us=time.time_ns() // 1000) == 0
    assert not counting.submitted, "a canceled job is not made after all"


def test_a_resumed_upscale_whose_result_is_stored_is_not_paid_for_again(run_scheduler):
    sched, store = run_scheduler(1)
    job = make_job(1)
    job.images[0].succeeded()
    job.images[0].upscale = UpscaleRecord(key=f"jobs/{job.id}/0_x4.png", status=Status.running)
    job.refresh()
    persist(store, job)
    store.storage.put(job.images[0].upscale.key, b"\x89PNG upscaled before the crash", "image/png")
    service = UpscaleService(SimpleNamespace(active_upscaler="replicate"), sched, store)
    service.pool = RecordingPool()
    service.resume(store.get(job.id))
    assert service.pool.futures == [], "no second prediction"
    assert store.get(job.id).images[0].upscale.status == Status.succeeded


def test_an_upscale_of_a_finished_job_left_running_by_a_crash_is_resumed(tmp_path):
    """The usual upscale: of an image of a job that finished (and left the unfinished index) minutes before. A
    crash while it runs must not leave its record `running` for good: POST .../upscale would answer that key
    for ever, and the image could never be upscaled."""
    storage = LocalStorage(tmp_path)
    first = ManifestStore(storage).start()
    first.build_index()  # a bucket this version has run on before
    job = make_job(1)
    assert first.create(job)
    first.update(job.id, lambda j: j.images[0].succeeded())
    assert first.flush(5)
    time.sleep(0.2)  # the writer removes the finished job's marker after its last write
    first.update(job.id, lambda j: setattr(j.images[0], "upscale", UpscaleRecord(key=f"jobs/{job.id}/0_x4.png",
                                                                                  status=Status.running)))
    assert first.flush(5)
    first.close()  # the backend dies while the upscale runs

    store = ManifestStore(storage).start()
    try:
        service = UpscaleService(SimpleNamespace(active_upscaler="replicate"), None, store)
        service.pool = RecordingPool()
        executor = SimpleNamespace(holds=lambda job_id: False)
        recover(store, executor, NO_LORAS, service, booted_us=time.time_ns() // 1000)
        assert len(service.pool.futures) == 1, "the upscale left running was never started again"
    finally:
        store.close()
