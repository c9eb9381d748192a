"""The upscaling engines: Replicate's path against a local fake of its API, the local path with a
tiny random Swin2SR. In every case the result is exactly 4x the source in each side. Then the
service that runs them: when an upscale shows running, and a local upscaler process that dies."""

import base64
import io
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from backend.jobs.manifests import ManifestStore
from backend.models import Status
from backend.storage import LocalStorage
from backend.upscale.engines import (
    REPLICATE_VERSION,
    LocalUpscaler,
    ReplicateUpscaler,
    UpscaleError,
    fit_4x,
    make_upscaler,
)
from backend.upscale.service import UpscaleService
from tests.backend.test_scheduler import make_job, run_scheduler  # noqa: F401 (fixture)
from tests.fake_replicate import FakeReplicate

ROOT = Path(__file__).resolve().parents[2]


def png_of(width: int, height: int, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def size_of(png: bytes) -> tuple[int, int]:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    return image.size


@pytest.fixture
def fake():
    server = FakeReplicate().start()
    yield server
    server.stop()


def replicate_upscaler(fake: FakeReplicate, **overrides) -> ReplicateUpscaler:
    options = dict(base_url=fake.url, timeout_s=5, poll_interval_s=0.02, retry_backoff_s=0.02)
    return ReplicateUpscaler(fake.token, **(options | overrides))


# --- Replicate ---

def test_replicate_upscale_returns_exactly_4x(fake):
    fake.polls_to_finish = 3
    source = png_of(37, 29)
    result = replicate_upscaler(fake).upscale(source)
    assert size_of(result) == (148, 116)
    [create] = fake.requests_to("POST", "/v1/predictions")
    assert create.headers["authorization"] == f"Bearer {fake.token}"
    assert create.body["version"] == REPLICATE_VERSION
    assert create.body["input"]["task"] == "real_sr"
    image = create.body["input"]["image"]
    assert image.startswith("data:image/png;base64,") and base64.b64decode(image.partition(",")[2]) == source
    assert len(fake.requests_to("GET", "/v1/predictions/")) == 3
    [download] = fake.requests_to("GET", "/files/")
    assert "authorization" not in download.headers  # the token goes to the API only


def test_replicate_result_is_the_models_output(fake):
    source = png_of(20, 10)
    result = replicate_upscaler(fake).upscale(source)
    [prediction] = fake.predictions.values()
    stored = fake.files[prediction["output"].rsplit("/", 1)[1]][0]
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(result))), np.asarray(Image.open(io.BytesIO(stored))))


def test_replicate_sends_source_url_when_given(fake):
    source = png_of(16, 24)
    url = fake.add_file(source)  # stands in for a presigned storage URL
    result = replicate_upscaler(fake, task="compressed_sr").upscale(source, source_url=url)
    assert size_of(result) == (64, 96)
    [create] = fake.requests_to("POST", "/v1/predictions")
    assert create.body["input"] == {"image": url, "task": "compressed_sr"}


def test_replicate_uploads_a_large_source_instead_of_a_data_uri(fake):
    source = png_of(30, 30)
    result = replicate_upscaler(fake, data_uri_max_bytes=100).upscale(source)
    assert size_of(result) == (120, 120)
    [upload] = fake.requests_to("POST", "/v1/files")
    assert upload.headers["authorization"] == f"Bearer {fake.token}"
    [create] = fake.requests_to("POST", "/v1/predictions")
    assert create.body["input"]["image"].startswith(f"{fake.url}/files/")


def test_replicate_honours_replicate_base_url(fake, monkeypatch):
    monkeypatch.setenv("REPLICATE_BASE_URL", fake.url)
    result = ReplicateUpscaler(fake.token, poll_interval_s=0.02).upscale(png_of(8, 8))
    assert size_of(result) == (32, 32)
    assert fake.requests_to("POST", "/v1/predictions")


def test_replicate_model_failure_carries_replicates_message(fake):
    fake.outcome, fake.polls_to_finish = "fail", 2
    with pytest.raises(UpscaleError, match="CUDA out of memory. Tried to allocate 2.00 GiB"):
        replicate_upscaler(fake).upscale(png_of(12, 12))


def test_replicate_throttled_then_succeeds(fake):
    fake.throttle_creates, fake.server_errors_on_poll = 2, 2
    result = replicate_upscaler(fake).upscale(png_of(10, 7))
    assert size_of(result) == (40, 28)
    assert len(fake.requests_to("POST", "/v1/predictions")) == 3  # two 429s, then created
    assert len(fake.predictions) == 1  # the retries did not start a second paid prediction
    assert len(fake.requests_to("GET", "/v1/predictions/")) == 3  # two 500s, then the answer


def test_replicate_create_whose_answer_is_lost_starts_no_second_prediction(fake):
    fake.lost_create_answers = 1  # started, then a gateway answered 504: a retry would pay for a second one
    with pytest.raises(UpscaleError, match="could not start.*504"):
        replicate_upscaler(fake).upscale(png_of(10, 10))
    assert len(fake.requests_to("POST", "/v1/predictions")) == 1 and len(fake.predictions) == 1


def test_replicate_gives_up_after_max_retries(fake):
    fake.throttle_creates = 10
    with pytest.raises(UpscaleError, match="429"):
        replicate_upscaler(fake, max_retries=2).upscale(png_of(10, 10))
    assert len(fake.requests_to("POST", "/v1/predictions")) == 3
    assert not fake.predictions


def test_replicate_prediction_that_never_finishes_is_bounded_and_canceled(fake):
    fake.outcome = "never"
    started = time.monotonic()
    with pytest.raises(UpscaleError, match="timed out after 1 s"):
        replicate_upscaler(fake, timeout_s=1, poll_interval_s=0.05).upscale(png_of(10, 10))
    assert time.monotonic() - started < 3
    [cancel] = fake.requests_to("POST", "/v1/predictions/")
    assert cancel.path.endswith("/cancel")
    assert [p["status"] for p in fake.predictions.values()] == ["canceled"]


def test_replicate_create_that_hangs_is_bounded(fake):
    fake.create_delay_s = 5  # the client sends create with no timeout of its own
    started = time.monotonic()
    with pytest.raises(UpscaleError, match="could not start"):
        replicate_upscaler(fake, timeout_s=1).upscale(png_of(10, 10))
    assert time.monotonic() - started < 3


def test_replicate_poll_asking_for_a_wait_past_the_limit_gives_up_within_it(fake):
    # The client's own retry layer would sleep Retry-After (4 s) up to 9 times: 36 s for a 1 s limit.
    fake.unavailable_polls, fake.retry_after = 100, "4"
    started = time.monotonic()
    with pytest.raises(UpscaleError, match=r"could not poll.*503 and asked to wait 4 s.*1 s limit"):
        replicate_upscaler(fake, timeout_s=1).upscale(png_of(10, 10))
    assert time.monotonic() - started < 1.5
    assert [p["status"] for p in fake.predictions.values()] == ["canceled"]


def test_replicate_poll_unavailable_for_a_moment_is_waited_out_as_asked(fake):
    fake.unavailable_polls, fake.retry_after = 2, "1"
    started = time.monotonic()
    assert size_of(replicate_upscaler(fake).upscale(png_of(10, 7))) == (40, 28)
    assert time.monotonic() - started >= 2, "Retry-After within the limit is honoured"
    assert len(fake.requests_to("GET", "/v1/predictions/")) == 3  # two 503s, then the answer
    assert len(fake.predictions) == 1


def test_replicate_slow_download_is_cut_at_the_limit(fake):
    fake.download_chunk_delay_s = 0.25  # about 21 KiB of output at 1 KiB a quarter second: over 5 s
    started = time.monotonic()
    with pytest.raises(UpscaleError, match=r"still downloading.*1.5 s limit"):
        replicate_upscaler(fake, timeout_s=1.5).upscale(png_of(24, 24))
    assert time.monotonic() - started < 2.2


def test_replicate_errors_never_contain_the_token(fake):
    fake.outcome, fake.error_message = "fail", f"model crashed; env had REPLICATE_API_TOKEN={fake.token}"
    with pytest.raises(UpscaleError) as failed:
        replicate_upscaler(fake).upscale(png_of(10, 10))
    assert "model crashed" in str(failed.value) and fake.token not in str(failed.value)


def test_replicate_refused_token_is_a_clear_error(fake):
    upscaler = ReplicateUpscaler("r8_wrong-token-123456", base_url=fake.url, retry_backoff_s=0.02)
    with pytest.raises(UpscaleError, match="401.*REPLICATE_API_TOKEN") as failed:
        upscaler.upscale(png_of(10, 10))
    assert "r8_wrong-token-123456" not in str(failed.value)
    assert len(fake.requests_to("POST", "/v1/predictions")) == 1  # a 4xx is not retried


def test_replicate_output_smaller_than_4x_fails(fake):
    fake.output_scale = 2
    with pytest.raises(UpscaleError, match="smaller than 4x"):
        replicate_upscaler(fake).upscale(png_of(10, 10))


def test_replicate_output_larger_than_4x_fails_rather_than_cropping_a_corner(fake):
    fake.output_scale = 8  # another model (REPLICATE_MODEL), or another task: its top-left quarter is no 4x
    with pytest.raises(UpscaleError, match="larger than 4x"):
        replicate_upscaler(fake).upscale(png_of(64, 64))


def test_replicate_padded_output_is_cropped_to_4x(fake):
    fake.output_pad = (8, 5)
    assert size_of(replicate_upscaler(fake).upscale(png_of(11, 9))) == (44, 36)


def test_replicate_check_finds_the_pinned_version(fake):
    replicate_upscaler(fake).check()
    assert fake.requests_to("GET", f"/v1/models/mv-lab/swin2sr/versions/{REPLICATE_VERSION}")
    with pytest.raises(UpscaleError, match="404"):
        replicate_upscaler(fake, version="0" * 64).check()


def test_fit_4x_rejects_a_truncated_image():
    result = png_of(40, 40)
    with pytest.raises(UpscaleError, match="not a complete image"):
        fit_4x(png_of(10, 10), result[: len(result) // 2])


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


# --- local Swin2SR ---

def save_tiny_swin2sr(directory: Path, upscale: int = 4) -> Path:
    import torch
    from transformers import Swin2SRConfig, Swin2SRForImageSuperResolution, Swin2SRImageProcessor

    torch.manual_seed(0)
    config = Swin2SRConfig(embed_dim=8, depths=[1], num_heads=[1], window_size=4, mlp_ratio=1.0, image_size=16,
                           upscale=upscale, upsampler="nearest+conv" if upscale == 4 else "pixelshuffle")
    Swin2SRForImageSuperResolution(config).save_pretrained(directory)
    Swin2SRImageProcessor().save_pretrained(directory)
    assert (directory / "model.safetensors").exists()
    return directory


@pytest.fixture(scope="module")
def tiny_swin2sr(tmp_path_factory) -> Path:
    return save_tiny_swin2sr(tmp_path_factory.mktemp("tiny-swin2sr"))


def test_local_upscale_of_odd_size_is_exactly_4x(tiny_swin2sr):
    result = LocalUpscaler(str(tiny_swin2sr), device="cpu").upscale(png_of(37, 29))
    assert size_of(result) == (148, 116)
    assert Image.open(io.BytesIO(result)).mode == "RGB"


def test_local_tiles_cover_the_image_and_match_one_pass(tiny_swin2sr):
    source = png_of(37, 29, seed=1)
    whole = np.asarray(Image.open(io.BytesIO(LocalUpscaler(str(tiny_swin2sr), device="cpu").upscale(source))))
    tiled_engine = LocalUpscaler(str(tiny_swin2sr), device="cpu", tile=16, tile_overlap=4)
    calls = []
    infer = tiled_engine._infer
    tiled_engine._infer = lambda image: calls.append(image.size) or infer(image)
    tiled = np.asarray(Image.open(io.BytesIO(tiled_engine.upscale(source))))
    assert tiled.shape == whole.shape == (116, 148, 3)
    assert len(calls) == 6  # 3 columns x 2 rows of tiles
    # A random model is not smooth, so tiles differ near their seams; overall they stay close.
    assert np.abs(tiled.astype(int) - whole.astype(int)).mean() < 20


def test_local_tiles_are_pasted_where_they_belong(monkeypatch):
    """With a stand-in model (nearest-neighbour 4x), the tiled result must equal one 4x pass."""
    engine = LocalUpscaler("unused", device="cpu", tile=8, tile_overlap=3)
    monkeypatch.setattr(engine, "_infer", lambda image: np.asarray(image).repeat(4, 0).repeat(4, 1))
    source = png_of(21, 13, seed=2)
    expected = np.asarray(Image.open(io.BytesIO(source))).repeat(4, 0).repeat(4, 1)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(engine.upscale(source)))), expected)


def test_local_rejects_a_model_that_is_not_4x(tmp_path):
    model = save_tiny_swin2sr(tmp_path / "x2", upscale=2)
    with pytest.raises(UpscaleError, match="upscales 2x"):
        LocalUpscaler(str(model), device="cpu").upscale(png_of(8, 8))


def test_local_missing_model_is_an_upscale_error(tmp_path):
    with pytest.raises(UpscaleError, match="could not load"):
        LocalUpscaler(str(tmp_path), device="cpu").upscale(png_of(8, 8))


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
