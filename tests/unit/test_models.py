"""backend/models.py: JobSpec's rules (CONTRACT.md "JobSpec"), the manifest's lifecycle verbs, the ticket's shape."""

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from backend.models import (
    MAX_SEED,
    ImageRecord,
    JobManifest,
    JobSpec,
    LoraRef,
    Placement,
    Product,
    ResolvedSpec,
    Status,
    StepProgress,
    now,
)

JOB_ID = "0123456789abcdef0123456789abcdef"
OLD = "2000-01-01T00:00:00.000Z"


def make_manifest(statuses=("queued", "queued"), seed: int = 100) -> JobManifest:
    spec = ResolvedSpec(prompt="a bottle on a beach", negative_prompt="", product=None, template=None, loras=[],
                        num_images=len(statuses), steps=2, guidance_scale=7.5, width=64, height=64, seed=seed,
                        strength=0.5)
    images = [ImageRecord(index=i, key=f"jobs/{JOB_ID}/{i}.png", seed=seed + i, status=Status(s))
              for i, s in enumerate(statuses)]
    return JobManifest(id=JOB_ID, created_at=OLD, updated_at=OLD, status=Status.queued, spec=spec, input_key=None,
                       images=images)


def error_text(**fields) -> str:
    with pytest.raises(ValidationError) as info:
        JobSpec(**fields)
    return str(info.value)


def assert_recent(stamp: str) -> None:
    assert stamp.endswith("Z")
    when = datetime.fromisoformat(stamp)
    assert when.tzinfo is not None
    assert abs(datetime.now(UTC) - when) < timedelta(seconds=5)


# ----- JobSpec -----
def test_job_spec_defaults_leave_the_template_fields_unset():
    dumped = JobSpec().model_dump()
    # unset here so the template, then the backend's defaults, can fill them (CONTRACT.md, JobSpec defaults)
    assert {k: dumped[k] for k in ("prompt", "negative_prompt", "product", "template", "steps", "guidance_scale",
                                   "width", "height", "seed", "strength", "mode", "placement", "reflection")} \
        == dict.fromkeys(("prompt", "negative_prompt", "product", "template", "steps", "guidance_scale", "width",
                          "height", "seed", "strength", "mode", "placement", "reflection"))
    assert (dumped["num_images"], dumped["loras"]) == (4, [])


def test_placement_defaults_match_the_contract():
    assert Placement().model_dump() == {"x": 0.5, "y": 0.55, "scale": 0.6}


@pytest.mark.parametrize("placement, fragment", [
    ({"x": -0.01}, "placement.x"), ({"x": 1.01}, "placement.x"), ({"y": 1.5}, "placement.y"),
    ({"scale": 0.04}, "placement.scale"), ({"scale": 1.01}, "placement.scale"), ({"z": 0}, "placement.z"),
])
def test_job_spec_placement_out_of_range_is_refused(placement, fragment):
    assert fragment in error_text(mode="place", placement=placement)


def test_job_spec_unknown_mode_is_refused():
    assert "'generate', 'restyle' or 'place'" in error_text(mode="inpaint")


def test_job_spec_accepts_the_contract_limits():
    spec = JobSpec(prompt="p", num_images=16, steps=150, guidance_scale=30, width=2048, height=64,
                   seed=MAX_SEED - 16, strength=1, product="bottle-1", template="studio-white",
                   loras=[{"name": "matte", "weight": -4}])
    assert (spec.width, spec.height, spec.num_images, spec.loras) == (2048, 64, 16, [LoraRef(name="matte", weight=-4)])


@pytest.mark.parametrize("field, value", [("width", 516), ("height", 1004), ("width", 65), ("height", 2047)])
def test_job_spec_size_not_multiple_of_8_names_the_value(field, value):
    assert f"{field} must be a multiple of 8, got {value}" in error_text(**{field: value})


@pytest.mark.parametrize("fields, fragment", [
    ({"width": 56}, "greater than or equal to 64"),
    ({"height": 2056}, "less than or equal to 2048"),
    ({"num_images": 0}, "greater than or equal to 1"),
    ({"num_images": 17}, "less than or equal to 16"),
    ({"steps": 0}, "greater than or equal to 1"),
    ({"steps": 151}, "less than or equal to 150"),
    ({"guidance_scale": -0.1}, "greater than or equal to 0"),
    ({"guidance_scale": 30.5}, "less than or equal to 30"),
    ({"strength": 1.01}, "less than or equal to 1"),
    ({"strength": -0.01}, "greater than or equal to 0"),
    ({"seed": -1}, "greater than or equal to 0"),
    ({"seed": MAX_SEED - 15}, f"less than or equal to {MAX_SEED - 16}"),
    ({"prompt": "x" * 4001}, "at most 4000 characters"),
])
def test_job_spec_out_of_range_is_refused(fields, fragment):
    text = error_text(**fields)
    assert next(iter(fields)) in text
    assert fragment in text


def test_job_spec_extra_field_is_forbidden():
    text = error_text(prompt="p", colour="red")
    assert "colour" in text and "Extra inputs are not permitted" in text


@pytest.mark.parametrize("field", ["product", "template"])
def test_job_spec_bad_reference_name_is_refused_with_the_value(field):
    assert f"{field} name must be 1-64 letters" in error_text(**{field: "../etc/passwd"})
    assert "'../etc/passwd'" in error_text(**{field: "../etc/passwd"})


def test_job_spec_bad_lora_name_is_refused():
    assert "LoRA name must be" in error_text(loras=[{"name": "a b", "weight": 1}])


@pytest.mark.parametrize("weight", [-4.01, 4.01])
def test_job_spec_lora_weight_out_of_range_is_refused(weight):
    assert "loras.0.weight" in error_text(loras=[{"name": "matte", "weight": weight}])


def test_job_spec_more_than_8_loras_is_refused():
    assert "at most 8 items" in error_text(loras=[{"name": f"l{i}"} for i in range(9)])


def test_job_spec_lora_extra_field_is_forbidden():
    assert "scale" in error_text(loras=[{"name": "matte", "scale": 1}])


def test_job_spec_from_json():
    spec = JobSpec.model_validate_json('{"prompt": "p", "width": 512, "height": 768, "seed": 7}')
    assert (spec.prompt, spec.width, spec.height, spec.seed, spec.num_images) == ("p", 512, 768, 7, 4)


# ----- ImageRecord verbs -----
def test_image_started_stamps_worker_and_time_and_clears_error():
    image = ImageRecord(index=0, key="jobs/a/0.png", seed=1, error="earlier try failed")
    image.started(worker=2)
    assert (image.status, image.worker, image.error, image.finished_at) == (Status.running, 2, None, None)
    assert_recent(image.started_at)


def test_image_started_forgets_progress_of_an_earlier_try():
    image = ImageRecord(index=0, key="jobs/a/0.png", seed=1, progress={"step": 5, "steps": 30})
    image.started(worker="node-a/0")
    assert (image.worker, image.progress) == ("node-a/0", None)


def test_image_requeued_forgets_worker_start_and_progress():
    image = ImageRecord(index=0, key="jobs/a/0.png", seed=1)
    image.started(worker=1)
    image.progress = StepProgress(step=3, steps=30)
    image.requeued()
    assert (image.status, image.worker, image.started_at, image.progress) == (Status.queued, None, None, None)


def test_image_succeeded_stamps_finish():
    image = ImageRecord(index=0, key="jobs/a/0.png", seed=1)
    image.started(worker=0)
    image.succeeded()
    assert (image.status, image.worker, image.error) == (Status.succeeded, 0, None)
    assert_recent(image.finished_at)
    assert image.finished_at >= image.started_at


def test_image_failed_records_error_and_finish():
    image = ImageRecord(index=0, key="jobs/a/0.png", seed=1)
    image.started(worker=0)
    image.failed("CUDA out of memory")
    assert (image.status, image.error) == (Status.failed, "CUDA out of memory")
    assert_recent(image.finished_at)


def test_image_canceled_stamps_finish():
    image = ImageRecord(index=0, key="jobs/a/0.png", seed=1)
    image.canceled()
    assert (image.status, image.started_at) == (Status.canceled, None)
    assert_recent(image.finished_at)


def test_now_is_utc_iso_with_milliseconds():
    stamp = now()
    assert len(stamp) == len("2025-01-01T00:00:00.000Z")
    assert_recent(stamp)


# ----- JobManifest -----
@pytest.mark.parametrize("statuses, expected", [
    (("queued", "queued"), "queued"),
    (("running", "queued"), "running"),
    (("succeeded", "queued"), "running"),
    (("succeeded", "succeeded"), "succeeded"),
    (("succeeded", "canceled"), "canceled"),
    (("failed", "canceled"), "canceled"),
])
def test_manifest_refresh_sets_status_and_stamps(statuses, expected):
    job = make_manifest(statuses)
    job.refresh()
    assert job.status == Status(expected)
    assert job.error is None
    assert job.updated_at != OLD
    assert_recent(job.updated_at)


def test_manifest_refresh_failed_job_says_how_many_and_why():
    job = make_manifest(("succeeded", "succeeded", "succeeded"))
    job.images[1].failed("the image is entirely black")
    job.refresh()
    assert job.status == Status.failed
    assert job.error == "1 of 3 images failed: the image is entirely black"


def test_manifest_refresh_failed_job_quotes_the_first_error():
    job = make_manifest(("queued", "queued", "queued", "queued"))
    job.images[2].failed("second")
    job.images[0].failed("first")
    job.images[1].succeeded()
    job.images[3].succeeded()
    job.refresh()
    assert job.error == "2 of 4 images failed: first"


def test_manifest_key_is_the_contract_key():
    assert make_manifest().manifest_key == f"jobs/{JOB_ID}/job.json"


def test_manifest_ticket_matches_the_contract_shape():
    ticket = make_manifest(("queued", "queued", "queued"), seed=42).ticket()
    assert ticket.model_dump(mode="json") == {
        "id": JOB_ID, "status": "queued", "manifest_key": f"jobs/{JOB_ID}/job.json",
        "images": [{"index": 0, "key": f"jobs/{JOB_ID}/0.png", "seed": 42},
                   {"index": 1, "key": f"jobs/{JOB_ID}/1.png", "seed": 43},
                   {"index": 2, "key": f"jobs/{JOB_ID}/2.png", "seed": 44}]}


def test_manifest_ticket_is_queued_even_once_running():
    job = make_manifest(("running", "succeeded"))
    job.refresh()
    assert job.status == Status.running
    assert job.ticket().status == Status.queued


def test_manifest_json_round_trips():
    job = make_manifest(("succeeded", "failed"))
    job.images[1].error = "boom"
    assert JobManifest.model_validate_json(job.model_dump_json()) == job


def test_manifest_json_has_exactly_the_contract_fields():
    dumped = make_manifest(("queued",)).model_dump(mode="json")
    assert set(dumped) == {"id", "created_at", "updated_at", "status", "spec", "input_key", "layout_key", "error",
                           "images"}
    assert set(dumped["images"][0]) == {"index", "key", "seed", "status", "worker", "error", "started_at",
                                        "finished_at", "progress", "preview_key", "upscale"}


# ----- Product -----
def test_product_ignores_unknown_fields_of_a_stored_record():
    product = Product.model_validate_json('{"name": "bottle", "trigger": "sks bottle", "future": 1}')
    assert product.model_dump() == {"name": "bottle", "trigger": "sks bottle", "category": None, "weight": 1.0,
                                    "has_lora": True, "packshot_key": None, "training": None}
