"""The Replicate upscaler against a local fake of Replicate's API: the result is exactly 4x the source,
every wait is bounded by the upscale's deadline, a lost answer pays once, and the token never shows."""

import base64
import io
import time

import numpy as np
import pytest
from PIL import Image

from backend.upscale.common import UpscaleError, fit_4x
from backend.upscale.replicate_engine import REPLICATE_VERSION, ReplicateUpscaler
from tests.factories import png_size, random_png
from tests.fake_replicate import FakeReplicate


@pytest.fixture
def fake():
    server = FakeReplicate().start()
    yield server
    server.stop()


def replicate_upscaler(fake: FakeReplicate, **overrides) -> ReplicateUpscaler:
    options = dict(base_url=fake.url, timeout_s=5, poll_interval_s=0.02, retry_backoff_s=0.02)
    return ReplicateUpscaler(fake.token, **(options | overrides))



def test_replicate_upscale_returns_exactly_4x(fake):
    fake.polls_to_finish = 3
    source = random_png(37, 29)
    result = replicate_upscaler(fake).upscale(source)
    assert png_size(result) == (148, 116)
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
    source = random_png(20, 10)
    result = replicate_upscaler(fake).upscale(source)
    [prediction] = fake.predictions.values()
    stored = fake.files[prediction["output"].rsplit("/", 1)[1]][0]
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(result))), np.asarray(Image.open(io.BytesIO(stored))))


def test_replicate_sends_source_url_when_given(fake):
    source = random_png(16, 24)
    url = fake.add_file(source)  # stands in for a presigned storage URL
    result = replicate_upscaler(fake, task="compressed_sr").upscale(source, source_url=url)
    assert png_size(result) == (64, 96)
    [create] = fake.requests_to("POST", "/v1/predictions")
    assert create.body["input"] == {"image": url, "task": "compressed_sr"}


def test_replicate_uploads_a_large_source_instead_of_a_data_uri(fake):
    source = random_png(30, 30)
    result = replicate_upscaler(fake, data_uri_max_bytes=100).upscale(source)
    assert png_size(result) == (120, 120)
    [upload] = fake.requests_to("POST", "/v1/files")
    assert upload.headers["authorization"] == f"Bearer {fake.token}"
    [create] = fake.requests_to("POST", "/v1/predictions")
    assert create.body["input"]["image"].startswith(f"{fake.url}/files/")


def test_replicate_honours_replicate_base_url(fake, monkeypatch):
    monkeypatch.setenv("REPLICATE_BASE_URL", fake.url)
    result = ReplicateUpscaler(fake.token, poll_interval_s=0.02).upscale(random_png(8, 8))
    assert png_size(result) == (32, 32)
    assert fake.requests_to("POST", "/v1/predictions")


def test_replicate_model_failure_carries_replicates_message(fake):
    fake.outcome, fake.polls_to_finish = "fail", 2
    with pytest.raises(UpscaleError, match="CUDA out of memory. Tried to allocate 2.00 GiB"):
        replicate_upscaler(fake).upscale(random_png(12, 12))


def test_replicate_throttled_then_succeeds(fake):
    fake.throttle_creates, fake.server_errors_on_poll = 2, 2
    result = replicate_upscaler(fake).upscale(random_png(10, 7))
    assert png_size(result) == (40, 28)
    assert len(fake.requests_to("POST", "/v1/predictions")) == 3  # two 429s, then created
    assert len(fake.predictions) == 1  # the retries did not start a second paid prediction
    assert len(fake.requests_to("GET", "/v1/predictions/")) == 3  # two 500s, then the answer


def test_replicate_create_whose_answer_is_lost_starts_no_second_prediction(fake):
    fake.lost_create_answers = 1  # started, then a gateway answered 504: a retry would pay for a second one
    with pytest.raises(UpscaleError, match="could not start.*504"):
        replicate_upscaler(fake).upscale(random_png(10, 10))
    assert len(fake.requests_to("POST", "/v1/predictions")) == 1 and len(fake.predictions) == 1


def test_replicate_gives_up_after_max_retries(fake):
    fake.throttle_creates = 10
    with pytest.raises(UpscaleError, match="429"):
        replicate_upscaler(fake, max_retries=2).upscale(random_png(10, 10))
    assert len(fake.requests_to("POST", "/v1/predictions")) == 3
    assert not fake.predictions


def test_replicate_prediction_that_never_finishes_is_bounded_and_canceled(fake):
    fake.outcome = "never"
    started = time.monotonic()
    with pytest.raises(UpscaleError, match="timed out after 1 s"):
        replicate_upscaler(fake, timeout_s=1, poll_interval_s=0.05).upscale(random_png(10, 10))
    assert time.monotonic() - started < 3
    [cancel] = fake.requests_to("POST", "/v1/predictions/")
    assert cancel.path.endswith("/cancel")
    assert [p["status"] for p in fake.predictions.values()] == ["canceled"]


def test_replicate_create_that_hangs_is_bounded(fake):
    fake.create_delay_s = 5  # the client sends create with no timeout of its own
    started = time.monotonic()
    with pytest.raises(UpscaleError, match="could not start"):
        replicate_upscaler(fake, timeout_s=1).upscale(random_png(10, 10))
    assert time.monotonic() - started < 3


def test_replicate_poll_asking_for_a_wait_past_the_limit_gives_up_within_it(fake):
    # The client's own retry layer would sleep Retry-After (4 s) up to 9 times: 36 s for a 1 s limit.
    fake.unavailable_polls, fake.retry_after = 100, "4"
    started = time.monotonic()
    with pytest.raises(UpscaleError, match=r"could not poll.*503 and asked to wait 4 s.*1 s limit"):
        replicate_upscaler(fake, timeout_s=1).upscale(random_png(10, 10))
    assert time.monotonic() - started < 1.5
    assert [p["status"] for p in fake.predictions.values()] == ["canceled"]


def test_replicate_poll_unavailable_for_a_moment_is_waited_out_as_asked(fake):
    fake.unavailable_polls, fake.retry_after = 2, "1"
    started = time.monotonic()
    assert png_size(replicate_upscaler(fake).upscale(random_png(10, 7))) == (40, 28)
    assert time.monotonic() - started >= 2, "Retry-After within the limit is honoured"
    assert len(fake.requests_to("GET", "/v1/predictions/")) == 3  # two 503s, then the answer
    assert len(fake.predictions) == 1


def test_replicate_slow_download_is_cut_at_the_limit(fake):
    fake.download_chunk_delay_s = 0.25  # about 21 KiB of output at 1 KiB a quarter second: over 5 s
    started = time.monotonic()
    with pytest.raises(UpscaleError, match=r"still downloading.*1.5 s limit"):
        replicate_upscaler(fake, timeout_s=1.5).upscale(random_png(24, 24))
    assert time.monotonic() - started < 2.2


def test_replicate_errors_never_contain_the_token(fake):
    fake.outcome, fake.error_message = "fail", f"model crashed; env had REPLICATE_API_TOKEN={fake.token}"
    with pytest.raises(UpscaleError) as failed:
        replicate_upscaler(fake).upscale(random_png(10, 10))
    assert "model crashed" in str(failed.value) and fake.token not in str(failed.value)


def test_replicate_refused_token_is_a_clear_error(fake):
    upscaler = ReplicateUpscaler("r8_wrong-token-123456", base_url=fake.url, retry_backoff_s=0.02)
    with pytest.raises(UpscaleError, match="401.*REPLICATE_API_TOKEN") as failed:
        upscaler.upscale(random_png(10, 10))
    assert "r8_wrong-token-123456" not in str(failed.value)
    assert len(fake.requests_to("POST", "/v1/predictions")) == 1  # a 4xx is not retried


def test_replicate_output_smaller_than_4x_fails(fake):
    fake.output_scale = 2
    with pytest.raises(UpscaleError, match="smaller than 4x"):
        replicate_upscaler(fake).upscale(random_png(10, 10))


def test_replicate_output_larger_than_4x_fails_rather_than_cropping_a_corner(fake):
    fake.output_scale = 8  # another model (REPLICATE_MODEL), or another task: its top-left quarter is no 4x
    with pytest.raises(UpscaleError, match="larger than 4x"):
        replicate_upscaler(fake).upscale(random_png(64, 64))


def test_replicate_padded_output_is_cropped_to_4x(fake):
    fake.output_pad = (8, 5)
    assert png_size(replicate_upscaler(fake).upscale(random_png(11, 9))) == (44, 36)


def test_replicate_check_finds_the_pinned_version(fake):
    replicate_upscaler(fake).check()
    assert fake.requests_to("GET", f"/v1/models/mv-lab/swin2sr/versions/{REPLICATE_VERSION}")
    with pytest.raises(UpscaleError, match="404"):
        replicate_upscaler(fake, version="0" * 64).check()


def test_fit_4x_rejects_a_truncated_image():
    result = random_png(40, 40)
    with pytest.raises(UpscaleError, match="not a complete image"):
        fit_4x(random_png(10, 10), result[: len(result) // 2])
