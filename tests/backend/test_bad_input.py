"""Bad input gets a 4xx that says what to fix, stores nothing, and leaves the server up."""

import io
import json
import struct

import pytest
import requests
from PIL import Image

from tests.factories import png_bytes

OK = {"prompt": "a shoe", "num_images": 1, "steps": 2}


def stored_jobs(backend) -> int:
    return len(backend.storage.list_dirs("jobs/"))


@pytest.fixture
def unchanged(backend):
    """Asserts the storage holds no more jobs after the test than before, and the server still answers."""
    before = stored_jobs(backend)
    yield
    assert stored_jobs(backend) == before, "a refused request stored something"
    assert backend.get("/health").json()["status"] == "ok"


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming a huge image, with a tiny body: decoding it would eat memory."""
    out = io.BytesIO()
    Image.new("1", (width, height)).save(out, format="PNG", optimize=True)
    return out.getvalue()


@pytest.mark.parametrize("spec, status, fragment", [
    (OK | {"product": "no-such-product"}, 422, "unknown product 'no-such-product'"),
    (OK | {"template": "no-such-template"}, 422, "unknown template 'no-such-template'"),
    (OK | {"loras": [{"name": "nope", "weight": 1}]}, 422, "unknown LoRA 'nope'"),
    (OK | {"num_images": 0}, 422, "num_images"),
    (OK | {"num_images": 17}, 422, "num_images"),
    (OK | {"steps": 0}, 422, "steps"),
    (OK | {"steps": 151}, 422, "steps"),
    (OK | {"guidance_scale": 31}, 422, "guidance_scale"),
    (OK | {"guidance_scale": -1}, 422, "guidance_scale"),
    (OK | {"strength": 1.5}, 422, "strength"),
    (OK | {"width": 100}, 422, "width must be a multiple of 8, got 100"),
    (OK | {"height": 4096}, 422, "height"),
    (OK | {"width": 32}, 422, "width"),
    (OK | {"prompt": ""}, 422, "prompt is empty"),
    (OK | {"prompt": "   "}, 422, "prompt is empty"),
    (OK | {"prompt": "x" * 1001}, 422, "at most 1000 characters"),
    (OK | {"seed": -1}, 422, "seed"),
    (OK | {"product": "../../etc/passwd"}, 422, "product name must be"),
    (OK | {"template": "../secret"}, 422, "template name must be"),
    (OK | {"loras": [{"name": "../x"}]}, 422, "LoRA name must be"),
    (OK | {"loras": [{"name": "x", "weight": "heavy"}]}, 422, "loras[0].weight: "),  # where, as a batch names a job
    (OK | {"colour": "red"}, 422, "colour"),
    ({"num_images": 1}, 422, "prompt is empty"),
    ([1, 2], 422, "JSON object"),
])
def test_bad_spec_is_refused_with_a_message(backend, unchanged, spec, status, fragment):
    r = backend.post("/v1/jobs", json=spec)
    assert r.status_code == status, r.text
    assert fragment in r.json()["detail"]


def test_malformed_json_is_refused(backend, unchanged):
    r = backend.post("/v1/jobs", data=b'{"prompt": "x",', headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and "not valid JSON" in r.json()["detail"]


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/batches"])
def test_deeply_nested_json_is_422_not_500(backend, unchanged, path):
    deep = b'{"jobs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    r = backend.post(path, data=deep, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert "nested too deeply" in r.json()["detail"] or "valid" in r.json()["detail"]
    assert backend.get("/health").status_code == 200, "the server stays up"


@pytest.mark.parametrize("spec", [
    {"prompt": "x", "num_images": 16, "width": 2048, "height": 2048, "steps": 150},
    {"prompt": "x", "num_images": 9, "width": 2048, "height": 2048, "steps": 30},
])
def test_a_job_past_the_compute_budget_is_422_with_the_numbers(backend, unchanged, spec):
    r = backend.post("/v1/jobs", json=spec)
    assert r.status_code == 422 and "MAX_JOB_COST=128" in r.json()["detail"]
    assert f"{spec['num_images']} x {spec['width']}x{spec['height']} at {spec['steps']} steps" in r.json()["detail"]


def test_wrong_content_type_is_refused(backend, unchanged):
    r = backend.post("/v1/jobs", data=b"prompt=x", headers={"Content-Type": "text/plain"})
    assert r.status_code == 422 and "application/json" in r.json()["detail"]


@pytest.mark.parametrize("photo, fragment", [
    (b"", "empty"),
    (b"this is not an image at all", "could not be read as an image"),
    (png_bytes(64, 64)[:60], "could not be read"),
    (b"GIF89a" + png_bytes()[6:], "could not be read"),
    (bomb_png(20000, 20000), "pixels"),
])
def test_bad_photo_is_refused(backend, unchanged, photo, fragment):
    r = backend.post("/v1/jobs", files={"spec": (None, json.dumps(OK)), "image": ("x.png", photo, "image/png")})
    assert r.status_code == 422, r.text
    assert fragment in r.json()["detail"]


def test_photo_too_large_in_bytes_is_refused(backend, unchanged):
    big = b"\x89PNG" + b"\0" * (20 * 1024 * 1024 + 10)
    r = backend.post("/v1/jobs", files={"spec": (None, json.dumps(OK)), "image": ("x.png", big, "image/png")})
    assert r.status_code == 413 and "limit" in r.json()["detail"]


def test_multipart_without_spec_is_refused(backend, unchanged):
    r = backend.post("/v1/jobs", files={"image": ("x.png", png_bytes(), "image/png")})
    assert r.status_code == 422 and "'spec'" in r.json()["detail"]


def test_a_spec_sent_as_a_file_part_is_read_like_a_field(backend):
    """`curl -F spec=@spec.json -F image=@photo.png` sends both parts as files."""
    r = backend.post("/v1/jobs", files={"spec": ("spec.json", json.dumps(OK), "application/json"),
                                        "image": ("x.png", png_bytes(), "image/png")})
    assert r.status_code == 202, r.text
    job = backend.wait_job(r.json()["id"])
    assert job["status"] == "succeeded" and job["input_key"] == f"jobs/{job['id']}/input.png", job


def test_a_spec_file_part_over_the_json_limit_is_refused(backend, unchanged):
    spec = json.dumps(OK | {"negative_prompt": "x"}) + " " * (1024 * 1024)
    r = backend.post("/v1/jobs", files={"spec": ("spec.json", spec, "application/json"),
                                        "image": ("x.png", png_bytes(), "image/png")})
    assert r.status_code == 413 and "'spec'" in r.json()["detail"]


def test_photo_with_too_few_denoising_steps_is_refused(backend, unchanged):
    r = backend.post("/v1/jobs", files={"spec": (None, json.dumps(OK | {"strength": 0.2})),
                                        "image": ("x.png", png_bytes(), "image/png")})
    assert r.status_code == 422 and "steps x strength" in r.json()["detail"]


@pytest.mark.parametrize("headers, status", [
    ({}, 401),
    ({"Authorization": "Bearer wrong-key"}, 401),
    ({"Authorization": "Basic dGVzdC1hcGkta2V5LTEyMw=="}, 401),
    ({"Authorization": "Bearer test-api-key-1234"}, 401),
])
def test_missing_or_wrong_api_key(backend, unchanged, headers, status):
    r = requests.post(backend.url + "/v1/jobs", json=OK, headers=headers, timeout=10)
    assert r.status_code == status and "API key" in r.json()["detail"]
    assert requests.get(backend.url + "/v1/catalog", headers=headers, timeout=10).status_code == status


def test_health_and_metrics_need_no_key(backend):
    assert requests.get(backend.url + "/health", timeout=10).status_code == 200
    assert requests.get(backend.url + "/metrics", timeout=10).status_code == 200


@pytest.mark.parametrize("path", ["/v1/jobs/not-a-job", "/v1/jobs/" + "0" * 32, "/v1/jobs/..%2E%2E"])
def test_unknown_or_hostile_job_id_is_404(backend, path):
    r = backend.get(path)
    assert r.status_code == 404 and "no job" in r.json()["detail"]


def test_path_that_climbs_out_of_jobs_matches_nothing(backend):
    r = backend.get("/v1/jobs/..%2F..%2Fproducts%2Fx")
    assert r.status_code == 404 and r.json()["detail"]


def _safetensors(tensors: dict[str, bytes]) -> bytes:
    header, offset = {}, 0
    for name, raw in tensors.items():
        header[name] = {"dtype": "F32", "shape": [len(raw) // 4], "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
    head = json.dumps(header).encode()
    return struct.pack("<Q", len(head)) + head + b"".join(tensors.values())


@pytest.mark.parametrize("name, data, fragment", [
    ("../escape", None, "product name must be"),
    ("a/b", None, "product name must be"),
    ("pickled", b"\x80\x04\x95" + b"\0" * 64, "safetensors"),
    ("garbage", b"not a safetensors file", "safetensors"),
    ("truncated", None, "truncated"),
])
def test_bad_product_upload_is_refused(backend, name, data, fragment, tiny_model):
    if data is None:
        data = _safetensors({"unet.down.lora_A.weight": b"\0" * 64})
        if name == "truncated":
            data = data[:-10]
    before = backend.storage.list_files("products/")
    r = backend.add_product(name, "sks thing", data)
    assert r.status_code == 422, r.text
    assert fragment in r.json()["detail"]
    assert backend.storage.list_files("products/") == before
