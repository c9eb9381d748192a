"""What the worker does when generation raises: out of memory, a broken device, any other error.
A unit test of the worker's task loop with a scripted generator; the pipe is a list."""

from types import SimpleNamespace

import pytest
from PIL import Image

from backend.gpu import worker
from backend.gpu.messages import Done, ImageDone, ImageFailed, Started, Task
from backend.storage import LocalStorage, StorageError


class Pipe:
    def __init__(self):
        self.sent = []

    def send(self, msg):
        self.sent.append(msg)


class ScriptedGenerator:
    """Raises `error` for batches of at least `fails_from` images; else makes grey squares."""

    device = "cuda:0"

    def __init__(self, error: Exception | None, fails_from: int = 1):
        self.error, self.fails_from, self.batches = error, fails_from, []

    def generate(self, task, should_cancel, on_step, on_preview=None):
        self.batches.append(task.indices)
        if self.error and len(task.indices) >= self.fails_from:
            raise self.error
        return [Image.new("RGB", (task.width, task.height), (seed % 256,) * 3) for seed in task.seeds]


def make_task(n: int) -> Task:
    return Task(task_id=7, job_id="j" * 32, indices=tuple(range(n)), seeds=tuple(range(10, 10 + n)),
                keys=tuple(f"jobs/{'j' * 32}/{i}.png" for i in range(n)), prompt="p", negative_prompt="",
                steps=2, guidance_scale=7.5, width=64, height=48, strength=0.5)


def run(gen, n: int, tmp_path) -> tuple[list, LocalStorage]:
    storage, pipe = LocalStorage(tmp_path), Pipe()
    worker._run_task(gen, storage, make_task(n), pipe, SimpleNamespace(value=-1), retry_s=1)
    return pipe.sent, storage


def test_a_batch_out_of_memory_is_made_one_image_at_a_time(tmp_path):
    gen = ScriptedGenerator(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), fails_from=2)
    sent, storage = run(gen, 3, tmp_path)
    assert gen.batches == [(0, 1, 2), (0,), (1,), (2,)]
    assert [type(m) for m in sent] == [Started, ImageDone, ImageDone, ImageDone, Done]
    assert all(storage.exists(f"jobs/{'j' * 32}/{i}.png") for i in range(3))


class TooBigAlone(ScriptedGenerator):
    """Out of memory for any batch of two or more, and for image `index` even alone."""

    def __init__(self, index: int):
        super().__init__(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), fails_from=2)
        self.index = index

    def generate(self, task, should_cancel, on_step, on_preview=None):
        if task.indices == (self.index,):
            self.batches.append(task.indices)
            raise self.error
        return super().generate(task, should_cancel, on_step)


def test_in_the_one_at_a_time_fallback_only_the_image_that_does_not_fit_fails(tmp_path):
    gen = TooBigAlone(index=1)
    sent, storage = run(gen, 3, tmp_path)
    assert gen.batches == [(0, 1, 2), (0,), (1,), (2,)]
    assert [m.error for m in sent if isinstance(m, ImageFailed)] == ["out of GPU memory at 64x48: try a smaller size"]
    assert sorted(m.index for m in sent if isinstance(m, ImageDone)) == [0, 2]
    assert [storage.exists(f"jobs/{'j' * 32}/{i}.png") for i in range(3)] == [True, False, True]


def test_one_image_out_of_memory_fails_with_a_reason_a_user_can_act_on(tmp_path):
    sent, storage = run(ScriptedGenerator(RuntimeError("MPS backend out of memory")), 1, tmp_path)
    failed = [m for m in sent if isinstance(m, ImageFailed)]
    assert [m.error for m in failed] == ["out of GPU memory at 64x48: try a smaller size"]
    assert isinstance(sent[-1], Done) and not storage.list_files(f"jobs/{'j' * 32}/")


def test_any_other_error_fails_the_batch_with_its_message_and_the_worker_stays(tmp_path):
    sent, _ = run(ScriptedGenerator(ValueError("prompt too long for the tokenizer")), 2, tmp_path)
    assert [m.error for m in sent if isinstance(m, ImageFailed)] == [
        "generation failed: ValueError: prompt too long for the tokenizer"] * 2
    assert isinstance(sent[-1], Done)


class Exited(Exception):
    pass


def test_a_cuda_error_that_broke_the_device_makes_the_worker_leave_without_failing_the_images(tmp_path,
                                                                                               monkeypatch):
    def exit_(code):
        raise Exited(code)

    probed = []
    monkeypatch.setattr(worker.os, "_exit", exit_)
    monkeypatch.setattr(worker, "_device_answers", lambda device: probed.append(device) or False)  # sticky
    with pytest.raises(Exited) as left:
        run(ScriptedGenerator(RuntimeError("CUDA error: an illegal memory access was encountered")), 2, tmp_path)
    assert left.value.args == (worker.DEVICE_BROKEN_EXIT,) and probed == ["cuda:0"]


def test_a_cuda_library_error_that_left_the_device_working_fails_the_batch_and_the_worker_stays(tmp_path,
                                                                                                 monkeypatch):
    monkeypatch.setattr(worker.os, "_exit", lambda code: pytest.fail("the worker left: a reload would fail again"))
    monkeypatch.setattr(worker, "_device_answers", lambda device: True)
    sent, _ = run(ScriptedGenerator(RuntimeError("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED")), 2, tmp_path)
    assert [m.error for m in sent if isinstance(m, ImageFailed)] == [
        "generation failed: RuntimeError: cuDNN error: CUDNN_STATUS_NOT_SUPPORTED"] * 2
    assert isinstance(sent[-1], Done)


def test_a_cublas_allocation_failure_is_out_of_memory_and_made_one_image_at_a_time(tmp_path, monkeypatch):
    monkeypatch.setattr(worker.os, "_exit", lambda code: pytest.fail("the worker left on an out-of-memory"))
    gen = ScriptedGenerator(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate(handle)"),
                            fails_from=2)
    sent, storage = run(gen, 2, tmp_path)
    assert gen.batches == [(0, 1), (0,), (1,)]
    assert all(storage.exists(f"jobs/{'j' * 32}/{i}.png") for i in range(2))


def test_a_batchs_images_are_stored_side_by_side_and_each_reported(tmp_path):
    """Three uploads that each wait for the other two: done only if they really run at once."""
    import threading

    class MeetingStorage(LocalStorage):
        meet = threading.Barrier(3, timeout=10)

        def put(self, key, data, content_type="application/octet-stream"):
            self.meet.wait()
            super().put(key, data, content_type)

    storage, pipe = MeetingStorage(tmp_path), Pipe()
    worker._run_task(ScriptedGenerator(None), storage, make_task(3), pipe, SimpleNamespace(value=-1), retry_s=0)
    assert sorted(m.index for m in pipe.sent if isinstance(m, ImageDone)) == [0, 1, 2], pipe.sent
    assert isinstance(pipe.sent[-1], Done)


def test_a_failed_upload_fails_only_its_image(tmp_path):
    class OneBadKey(LocalStorage):
        def put(self, key, data, content_type="application/octet-stream"):
            if key.endswith("/1.png"):
                raise StorageError("access denied")
            super().put(key, data, content_type)

    storage, pipe = OneBadKey(tmp_path), Pipe()
    worker._run_task(ScriptedGenerator(None), storage, make_task(3), pipe, SimpleNamespace(value=-1), retry_s=0)
    assert sorted(m.index for m in pipe.sent if isinstance(m, ImageDone)) == [0, 2]
    assert [m.error for m in pipe.sent if isinstance(m, ImageFailed)] == [
        "storage write failed: StorageError: access denied"]
