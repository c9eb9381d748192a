"""Schemathesis, a generic OpenAPI checker, against the live backend with every check and every phase
(stateful included): what /openapi.json promises is what the API does, and whatever arrives, no 5xx."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

CONFIG = Path(__file__).with_name("schemathesis.toml")
EXAMPLES_PER_OPERATION = 20  # about half a minute on two busy cores, stateful phase included
PHASES = ("examples", "coverage", "fuzzing", "stateful")


@pytest.fixture(scope="module")
def fuzz_backend(make_backend, tmp_path_factory):
    # A small queue and a short time limit keep the fuzzer's valid jobs (up to 16 images of
    # 2048x2048 at 150 steps) from occupying the CPU for long: refusals are 429s, never 5xx. The local
    # upscaler (a tiny Swin2SR) is on: with it off, an upscale is a 503 by design, which the checker counts
    # as a server error once its stateful phase reaches a finished image.
    from tests.factories import save_tiny_swin2sr

    upscaler = save_tiny_swin2sr(tmp_path_factory.mktemp("fuzz-swin2sr"))
    backend = make_backend(WORKERS="1", QUEUE_MAX_IMAGES="8", IMAGE_TIMEOUT_S="5", RATE_LIMIT_PER_MINUTE="0",
                           UPSCALER="local", LOCAL_UPSCALER_MODEL=str(upscaler))
    yield backend
    backend.stop()


def run_schemathesis(backend, report_dir: Path) -> tuple[dict, list[dict], str]:
    """Run the CLI as an integrator would; return its JSON report, every request it made (HAR) and its output."""
    command = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "run", f"{backend.url}/openapi.json",
        "--checks", "all", "--phases", ",".join(PHASES), "--max-examples", str(EXAMPLES_PER_OPERATION),
        "--workers", "1", "--continue-on-failure", "--request-timeout", "30",  # a DELETE may wait for a cancel
        "--header", f"Authorization: Bearer {backend.api_key}",
        "--report", "json,har", "--report-dir", str(report_dir),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)  # the report says why
    output = done.stdout + done.stderr
    reports = {kind: next(report_dir.glob(f"{kind}-*.json"), None) for kind in ("json", "har")}
    assert all(reports.values()), f"schemathesis wrote no report (exit {done.returncode}):\n{output[-3000:]}"
    entries = json.loads(reports["har"].read_text())["log"]["entries"]
    return json.loads(reports["json"].read_text()), entries, output


def test_openapi_document_holds_under_every_check(fuzz_backend, tmp_path, record_property):
    report, requests_made, output = run_schemathesis(fuzz_backend, tmp_path)
    summary = output[max(0, output.find("== FAILURES ==")):][-6000:]  # what failed, how to reproduce it
    assert report["failures"] == [], summary
    assert report["errors"] == [], summary
    assert report["exit_code"] == 0 and report["complete"], summary

    operations = report["operations"]
    assert operations["tested"] == operations["total"] >= 15, operations
    for phase in PHASES:  # each ran and found nothing: none was skipped for want of links or examples
        assert report["phases"][phase]["status"] == "success", (phase, report["phases"])

    statuses = [entry["response"]["status"] for entry in requests_made]
    server_errors = [(e["request"]["method"], e["request"]["url"], e["response"]["status"])
                     for e in requests_made if e["response"]["status"] >= 500]
    assert not server_errors, server_errors[:10]
    assert len(statuses) >= 5 * operations["total"], len(statuses)
    assert any(200 <= status < 300 for status in statuses)
    record_property("fuzz_requests", len(statuses))
    record_property("fuzz_operations", operations["total"])
    record_property("fuzz_seconds", round(report["running_time"], 1))
    assert fuzz_backend.get("/health").json()["status"] in ("ok", "degraded", "starting")
    assert "Traceback" not in fuzz_backend.log()
