"""backend/api/openapi.py: /openapi.json says what the API does, checked on the document itself (fast; the
live check with every Schemathesis check is tests/backend/test_fuzz.py)."""

import pytest
from fastapi.testclient import TestClient

from backend.api.batch_routes import Batch
from backend.config import Settings
from backend.main import create_app
from backend.models import JobSpec

KEY = "openapi-test-key-123"
METHODS = ("get", "post", "delete")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return create_app(Settings(api_key=KEY, storage_url=f"file://{tmp_path_factory.mktemp('storage')}"))


@pytest.fixture(scope="module")
def doc(app) -> dict:
    return TestClient(app).get("/openapi.json", headers={"Authorization": f"Bearer {KEY}"}).json()


def operations(doc: dict):
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield f"{method.upper()} {path}", operation


def refs(node):
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def test_every_reference_resolves(doc):
    schemas = doc["components"]["schemas"]
    missing = {ref for ref in refs(doc) if ref.removeprefix("#/components/schemas/") not in schemas}
    assert not missing
    assert "JobSpec" in schemas and "Batch" in schemas


def test_every_error_is_documented_as_a_detail_string(doc):
    assert doc["components"]["schemas"]["ErrorDetail"]["properties"]["detail"]["type"] == "string"
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    for label, operation in operations(doc):
        for status, response in operation["responses"].items():
            if int(status) >= 400:
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorDetail"}, (label, status)


def test_every_v1_operation_needs_the_key_and_says_what_refusals_look_like(doc):
    assert doc["components"]["securitySchemes"]["ApiKey"] == doc["components"]["securitySchemes"]["ApiKey"] | {
        "type": "http", "scheme": "bearer"}
    for label, operation in operations(doc):
        if " /v1/" in label:
            assert operation["security"] == [{"ApiKey": []}], label
            assert {"401", "403", "503"} <= operation["responses"].keys(), label
            assert all(p["name"].lower() != "authorization" for p in operation.get("parameters", [])), label
        else:
            assert "security" not in operation, label


@pytest.mark.parametrize(("label", "statuses"), [
    ("GET /v1/jobs/{job_id}", {"200", "404"}),
    ("DELETE /v1/jobs/{job_id}", {"204", "404"}),
    ("POST /v1/jobs/{job_id}/images/{index}/upscale", {"202", "404", "409", "429"}),
    ("POST /v1/jobs", {"202", "413", "422", "429"}),
    ("POST /v1/batches", {"202", "413", "422", "429"}),
    ("DELETE /v1/products/{name}", {"204", "404", "422"}),
    ("GET /v1/trainings/{training_id}", {"200", "404"}),
])
def test_the_statuses_each_operation_answers_are_documented(doc, label, statuses):
    assert statuses <= dict(operations(doc))[label]["responses"].keys()


def test_refusals_document_the_headers_they_always_carry(doc):
    for label, operation in operations(doc):
        responses = operation["responses"]
        if "401" in responses:
            assert responses["401"]["headers"]["WWW-Authenticate"]["required"], label
        if "429" in responses:
            assert responses["429"]["headers"]["Retry-After"]["schema"] == {"type": "integer", "minimum": 1}, label


def test_metrics_are_documented_as_text(doc):
    content = doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert content == {"text/plain": {"schema": {"type": "string"}}}


def test_a_job_is_json_or_multipart_with_the_spec_as_a_json_part(doc):
    content = doc["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]
    assert content["application/json"]["schema"] == {"$ref": "#/components/schemas/JobSpec"}
    form = content["multipart/form-data"]
    assert form["schema"]["properties"]["spec"] == {"$ref": "#/components/schemas/JobSpec"}
    assert form["schema"]["properties"]["image"]["format"] == "binary"
    assert form["encoding"]["spec"]["contentType"] == "application/json"
    JobSpec.model_validate(content["application/json"]["example"])
    batch = doc["paths"]["/v1/batches"]["post"]["requestBody"]["content"]["application/json"]
    assert batch["schema"] == {"$ref": "#/components/schemas/Batch"}
    Batch.model_validate(batch["example"])


def test_form_fields_are_never_null_and_files_are_files(doc):
    schemas = doc["components"]["schemas"]
    product = schemas["Body_add_product"]["properties"]
    assert product["file"]["contentMediaType"] == "application/octet-stream"
    assert product["photo"]["contentMediaType"] == "application/octet-stream"
    assert product["category"]["type"] == "string"
    training = schemas["Body_train_product"]["properties"]
    assert training["photos"]["minItems"] == 2 and training["photos"]["maxItems"] == 40
    assert training["steps"]["type"] == "integer"
    for body in ("Body_add_product", "Body_train_product", "Body_cut_out"):
        assert "null" not in str(schemas[body]), body


def test_links_name_real_operations_and_parameters(doc):
    by_id = {operation["operationId"]: operation for _, operation in operations(doc)}
    seen = 0
    for label, operation in operations(doc):
        for response in operation["responses"].values():
            for name, link in response.get("links", {}).items():
                target = by_id[link["operationId"]]
                names = {p["name"] for p in target.get("parameters", [])}
                assert set(link["parameters"]) <= names, (label, name)
                seen += 1
    assert seen >= 8


def test_a_wrong_method_is_answered_with_every_method_the_path_takes(app):
    client = TestClient(app)
    r = client.request("OPTIONS", "/v1/jobs/" + "0" * 32, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 405
    assert r.headers["allow"] == "DELETE, GET"
    assert r.json() == {"detail": "Method Not Allowed"}
    assert client.put("/v1/jobs", headers={"Authorization": f"Bearer {KEY}"}).headers["allow"] == "GET, POST"
