"""A property-based fuzz pass over the API from its own OpenAPI schema: whatever arrives, no 5xx."""

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

EXAMPLES_PER_OPERATION = 25


@pytest.fixture(scope="module")
def fuzz_backend(make_backend):
    # A small queue and a short time limit keep the fuzzer's valid jobs (up to 16 images of
    # 2048x2048 at 150 steps) from occupying the CPU for long: refusals are 429s, never 5xx.
    backend = make_backend(WORKERS="1", QUEUE_MAX_IMAGES="8", IMAGE_TIMEOUT_S="5", RATE_LIMIT_PER_MINUTE="0")
    yield backend
    backend.stop()


def test_no_server_errors_for_any_generated_request(fuzz_backend, record_property):
    schema = schemathesis.openapi.from_url(fuzz_backend.url + "/openapi.json", headers=fuzz_backend.headers)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8, [op.label for op in operations]
    tried = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def fuzz(case):
            response = case.call(headers=fuzz_backend.headers, timeout=30)
            tried.append(response.status_code)
            assert response.status_code < 500, (
                f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}")
            content_type = (response.headers.get("content-type") or [""])[0]
            assert content_type.startswith(("application/json", "text/plain")), content_type

        fuzz()
    assert len(tried) >= 5 * len(operations)
    record_property("fuzz_requests", len(tried))
    record_property("fuzz_operations", len(operations))
    assert fuzz_backend.get("/health").json()["status"] in ("ok", "degraded", "starting")
    assert "Traceback" not in fuzz_backend.log()
