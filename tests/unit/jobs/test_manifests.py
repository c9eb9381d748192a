"""ManifestStore: the one writer of manifests. Changes never wait on storage; the writer catches up."""

import threading
import time

import pytest

from backend.contract import new_job_id
from backend.jobs.manifests import ManifestStore
from backend.models import ImageRecord, JobManifest, ResolvedSpec, Status, UpscaleRecord, now
from backend.storage import LocalStorage, ObjectMissing, StorageError


def make_job(n: int = 2) -> JobManifest:
    job_id = new_job_id()
    spec = ResolvedSpec(prompt="p", negative_prompt="", product=None, template=None, loras=[], num_images=n,
                        steps=2, guidance_scale=7.5, width=64, height=64, seed=0, strength=0.5)
    return JobManifest(id=job_id, created_at=now(), updated_at=now(), status=Status.queued, spec=spec,
                       input_key=None, images=[ImageRecord(index=i, key=f"jobs/{job_id}/{i}.png", seed=i)
                                               for i in range(n)])


class GatedStorage(LocalStorage):
    """Local storage whose writes can be held (`gate` cleared), made to fail (`down`), and are counted."""

    def __init__(self, root):
        super().__init__(root)
        self.gate, self.down, self.puts = threading.Event(), False, 0
        self.gate.set()

    def put(self, key, data, content_type="application/octet-stream"):
        self.gate.wait(30)
        if self.down:
            raise StorageError("connection refused")
        self.puts += 1
        super().put(key, data, content_type)

    def ping(self):
        if self.down:
            raise StorageError("connection refused")


@pytest.fixture
def store(tmp_path):
    store = ManifestStore(GatedStorage(tmp_path)).start()
    yield store
    store.storage.gate.set()
    store.storage.down = False
    store.close(timeout=5)


def test_update_is_written_to_storage_by_the_writer(store):
    job = make_job()
    assert store.create(job)
    store.update(job.id, lambda j: j.images[0].started(worker=1))
    assert store.flush(5)
    stored = store.load(job.id)
    assert (stored.status, stored.images[0].status, stored.images[0].worker) == (Status.running, Status.running, 1)


def test_update_never_waits_on_a_slow_storage(store):
    job = make_job()
    assert store.create(job)
    store.storage.gate.clear()  # every write now hangs
    started = time.monotonic()
    for index in (0, 1):
        store.update(job.id, lambda j, i=index: j.images[i].succeeded())
    assert time.monotonic() - started < 0.5
    assert store.get(job.id).status == Status.succeeded, "readers see the newest state at once"
    assert store.load(job.id).status == Status.queued, "storage has not caught up yet"
    assert not store.flush(0.2)
    store.storage.gate.set()
    assert store.flush(5) and store.load(job.id).status == Status.succeeded


def test_quick_changes_are_coalesced_into_fewer_writes(store):
    job = make_job(1)
    assert store.create(job)
    store.storage.gate.clear()
    store.update(job.id, lambda j: j.images[0].started(worker=0))
    time.sleep(0.1)  # the writer is now blocked on the first write
    before = store.storage.puts
    for step in range(50):
        store.update(job.id, lambda j, s=step: setattr(j.images[0], "error", f"step {s}"))
    store.storage.gate.set()
    assert store.flush(5)
    assert store.storage.puts - before <= 3
    assert store.load(job.id).images[0].error == "step 49", "the last change is the one stored"


def test_an_outage_is_counted_and_written_once_storage_answers(store):
    job = make_job()
    assert store.create(job)
    store.storage.down = True
    store.update(job.id, lambda j: j.images[0].succeeded())
    deadline = time.monotonic() + 5
    while store.storage_ok and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not store.storage_ok and store.unsaved() == 1 and "connection refused" in store.storage_error
    store.storage.down = False
    assert store.flush(10)
    assert store.storage_ok and store.unsaved() == 0
    assert store.load(job.id).images[0].status == Status.succeeded


def test_a_failed_create_says_so_and_keeps_nothing(store):
    store.storage.down = True
    job = make_job()
    assert store.create(job) is False
    store.storage.down = False
    with pytest.raises(ObjectMissing):
        store.get(job.id)


def test_a_finished_job_leaves_memory_once_written_but_not_while_an_upscale_runs(store):
    job = make_job(1)
    assert store.create(job)

    def finish_with_upscale(j):
        j.images[0].succeeded()
        j.images[0].upscale = UpscaleRecord(key="k", status=Status.running)

    store.update(job.id, finish_with_upscale)
    assert store.flush(5)
    store.storage.put(job.manifest_key, b"{}", "application/json")  # storage changed behind its back
    assert store.get(job.id).images[0].upscale.status == Status.running, "still held: its upscale runs"
    store.update(job.id, lambda j: setattr(j.images[0].upscale, "status", Status.succeeded))
    assert store.flush(5)
    store.storage.put(job.manifest_key, b"{}", "application/json")
    with pytest.raises(ValueError):
        store.get(job.id)  # settled and written: read from storage again


def test_update_of_an_unknown_job_is_object_missing(store):
    with pytest.raises(ObjectMissing):
        store.update(new_job_id(), lambda j: None)


def test_a_deleted_job_is_gone_before_its_manifest_is_swept_and_no_late_change_brings_it_back(store):
    job = make_job()
    assert store.create(job)
    store.update(job.id, lambda j: j.images[0].started(worker=1))
    assert store.flush(5)
    store.forget(job.id)  # the delete; its sweep of jobs/<id>/ comes after
    assert store.was_deleted(job.id) and store.storage.exists(job.manifest_key)
    with pytest.raises(ObjectMissing):
        store.get(job.id)
    with pytest.raises(ObjectMissing):  # a worker's late report, an upscale click
        store.update(job.id, lambda j: j.images[0].succeeded())
    assert store.flush(5) and not store.load(job.id).images[0].status.is_terminal(), "written back after the delete"


def test_recent_pages_back_with_before(store):
    jobs = [make_job(1) for _ in range(3)]
    for job in jobs:
        assert store.create(job)
    newest_first = [j.id for j in reversed(jobs)]
    assert [j.id for j in store.recent(10)] == newest_first
    assert [j.id for j in store.recent(10, before=newest_first[0])] == newest_first[1:]
    assert [j.id for j in store.recent(1, before=newest_first[1])] == newest_first[2:]


def test_on_change_sees_before_and_after(tmp_path):
    seen = []
    store = ManifestStore(LocalStorage(tmp_path), on_change=lambda after, before: seen.append(
        (before.images[0].status, after.images[0].status))).start()
    try:
        job = make_job(1)
        assert store.create(job)
        store.update(job.id, lambda j: j.images[0].canceled())
        assert seen == [(Status.queued, Status.canceled)]
    finally:
        store.close()


class CountingStorage(LocalStorage):
    """Counts the storage calls a read makes: the index's promise is that they do not grow with history."""

    def __init__(self, root):
        super().__init__(root)
        self.calls = {"list": 0, "get": 0}

    def list_files(self, prefix):
        self.calls["list"] += 1
        return super().list_files(prefix)

    def list_dirs(self, prefix):
        self.calls["list"] += 1
        return super().list_dirs(prefix)

    def list_page(self, prefix, limit, start_after=None):
        self.calls["list"] += 1
        return [k for k in LocalStorage.list_files(self, prefix) if start_after is None or k > start_after][:limit]

    def get(self, key):
        self.calls["get"] += 1
        return super().get(key)


def finished(job: JobManifest) -> JobManifest:
    for img in job.images:
        img.succeeded()
    job.refresh()
    return job


@pytest.mark.parametrize("history", [20, 2000])
def test_a_history_page_and_recovery_cost_the_same_whatever_the_history(tmp_path, history):
    storage = CountingStorage(tmp_path)
    store = ManifestStore(storage).start()
    try:
        store.build_index()  # a new bucket: indexed from the first job on
        # the oldest is unfinished: it must be found however many came after it
        jobs = [make_job(1)] + [finished(make_job(1)) for _ in range(history - 1)]
        for job in jobs:
            assert store.create(job)
        store.flush()
        storage.calls = {"list": 0, "get": 0}
        page = store.recent(20)
        assert [j.id for j in page] == [j.id for j in reversed(jobs)][:20]
        assert storage.calls == {"list": 1, "get": 0}, "live jobs are served from memory, the rest one page"
        storage.calls = {"list": 0, "get": 0}
        assert store.unfinished_ids() == [jobs[0].id]
        assert storage.calls["list"] == 1 and storage.calls["get"] == 0
        older = store.recent(5, before=page[-1].id)
        assert [j.id for j in older] == [j.id for j in reversed(jobs)][20:25]
        after_restart = ManifestStore(storage)  # nothing in memory: every manifest is read from storage
        storage.calls = {"list": 0, "get": 0}
        assert len(after_restart.recent(20)) == 20
        assert storage.calls == {"list": 1, "get": 20}, "one page of the index, one read per job shown"
    finally:
        store.close()


def test_a_finished_job_leaves_the_unfinished_markers_once_written(tmp_path):
    store = ManifestStore(LocalStorage(tmp_path)).start()
    try:
        store.build_index()
        job = make_job(1)
        assert store.create(job)
        assert store.unfinished_ids() == [job.id]
        store.update(job.id, lambda j: j.images[0].succeeded())
        assert store.flush(5)
        deadline = time.monotonic() + 5
        while store.unfinished_ids() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert store.unfinished_ids() == [] and [j.id for j in store.recent(5)] == [job.id]
    finally:
        store.close()


def test_a_finished_job_given_an_upscale_is_marked_unfinished_again_until_it_ends(tmp_path):
    """Recovery finds work by the unfinished markers: an upscale of a finished job's image is such work."""
    store = ManifestStore(LocalStorage(tmp_path)).start()

    def unfinished_soon(expected):
        deadline = time.monotonic() + 5
        while store.unfinished_ids() != expected and time.monotonic() < deadline:
            time.sleep(0.02)
        return store.unfinished_ids()

    try:
        store.build_index()
        job = make_job(1)
        assert store.create(job)
        store.update(job.id, lambda j: j.images[0].succeeded())
        assert store.flush(5) and unfinished_soon([]) == []
        upscale = UpscaleRecord(key=f"jobs/{job.id}/0_x4.png", status=Status.running)
        store.update(job.id, lambda j: setattr(j.images[0], "upscale", upscale))
        assert store.flush(5) and unfinished_soon([job.id]) == [job.id]
        assert store.storage.get(f"index/unfinished/{job.id}") == store.owner.encode()
        store.update(job.id, lambda j: setattr(j.images[0].upscale, "status", Status.succeeded))
        assert store.flush(5) and unfinished_soon([]) == []
    finally:
        store.close()


def test_jobs_written_before_the_index_are_indexed_once(tmp_path):
    storage = LocalStorage(tmp_path)
    old = [make_job(1), finished(make_job(1))]
    for job in old:  # as an earlier version wrote them: manifests only
        storage.put(job.manifest_key, job.model_dump_json().encode(), "application/json")
    store = ManifestStore(storage).start()
    try:
        assert store.unfinished_ids() == [old[0].id]
        assert [j.id for j in store.recent(5)] == [old[1].id, old[0].id]
        assert store.build_index() is False, "built once"
    finally:
        store.close()
