"""The frontend's pure parts: merging a manifest with the storage listing, and the settings reader."""

from datetime import datetime, timezone

from streamlit.testing.v1 import AppTest

from frontend import downloads
from frontend.jobs import format_elapsed, job_view
from frontend.services import Health, health_from
from frontend.views.chrome import status_meta

JOB = "01a206f4c81d197d56572d84651ad46e"


def manifest(*statuses, upscale=None) -> dict:
    images = [{"index": i, "key": f"jobs/{JOB}/{i}.png", "seed": 7 + i, "status": s,
               "error": "out of memory" if s == "failed" else None, "upscale": upscale if i == 0 else None}
              for i, s in enumerate(statuses)]
    return {"id": JOB, "status": "running", "created_at": "2026-01-01T10:00:00.000Z",
            "updated_at": "2026-01-01T10:00:42.000Z", "spec": {"prompt": "a shoe", "width": 64, "height": 64},
            "images": images}


def test_an_image_is_done_the_moment_its_object_is_listed():
    view = job_view(manifest("running", "queued"), {f"jobs/{JOB}/0.png"})
    assert [i.status for i in view.images] == ["succeeded", "queued"]
    assert [i.label for i in view.images] == ["Done", "Waiting"]
    assert view.done_count == 1 and not view.terminal and view.needs_polling


def test_a_download_is_named_by_its_product_and_style():
    made = manifest("succeeded")
    made["spec"] |= {"product": "amber-bottle", "template": "beach-sunset"}
    assert downloads.file_stem(job_view(made, set()), 0) == f"showroom-amber-bottle-beach-sunset-{JOB[:12]}-1"
    made["spec"] |= {"product": "../../etc", "template": None}  # a manifest someone else wrote: never a path
    assert downloads.job_stem(job_view(made, set())) == f"showroom-{JOB[:12]}"


def test_terminal_job_stops_polling_and_keeps_failure_reasons():
    view = job_view(manifest("succeeded", "failed"), {f"jobs/{JOB}/0.png"})
    assert view.terminal and not view.needs_polling
    assert view.images[1].error == "out of memory"
    assert view.elapsed_s() == 42


def test_a_running_upscale_keeps_polling_until_its_object_lands():
    up = {"key": f"jobs/{JOB}/0_x4.png", "status": "running", "error": None}
    assert job_view(manifest("succeeded", upscale=up), {f"jobs/{JOB}/0.png"}).needs_polling
    landed = job_view(manifest("succeeded", upscale=up), {f"jobs/{JOB}/0.png", f"jobs/{JOB}/0_x4.png"})
    assert landed.images[0].upscaled and not landed.needs_polling


def test_elapsed_counts_to_now_while_running():
    view = job_view(manifest("running"))
    assert view.elapsed_s(datetime(2026, 1, 1, 10, 1, 5, tzinfo=timezone.utc)) == 65
    assert format_elapsed(65) == "1 min 05 s" and format_elapsed(9) == "9 s"


def test_elapsed_of_a_finished_job_ends_at_its_last_image_not_at_a_later_upscale():
    up = {"key": f"jobs/{JOB}/0_x4.png", "status": "succeeded", "error": None}
    m = manifest("succeeded", "failed", upscale=up)
    m["updated_at"] = "2026-01-01T13:00:00.000Z"  # the upscale, three hours later, rewrote the manifest
    m["images"][0] |= {"started_at": "2026-01-01T10:00:01.000Z", "finished_at": "2026-01-01T10:00:09.000Z"}
    m["images"][1] |= {"started_at": "2026-01-01T10:00:01.000Z", "finished_at": "2026-01-01T10:00:10.500Z"}
    view = job_view(m, {f"jobs/{JOB}/0.png", f"jobs/{JOB}/0_x4.png"})
    assert view.terminal and view.elapsed_s() == 10.5
    assert view.duration_words() == f"took {format_elapsed(10.5)}"


def test_a_canceled_job_says_when_it_was_canceled_not_what_it_took():
    m = manifest("succeeded", "canceled")
    m["status"] = "canceled"
    m["images"][0] |= {"started_at": "2026-01-01T10:00:01.000Z", "finished_at": "2026-01-01T10:00:04.000Z"}
    m["images"][1] |= {"finished_at": "2026-01-01T10:00:06.000Z"}
    view = job_view(m, {f"jobs/{JOB}/0.png"})
    assert view.duration_words() == f"canceled after {format_elapsed(view.elapsed_s())}"
    m["status"] = "running"
    m["images"][1] |= {"status": "running", "finished_at": None}
    running = job_view(m, {f"jobs/{JOB}/0.png"})
    assert running.duration_words().endswith(" elapsed"), "a running job's time is still running"


def workers_on(*devices: str) -> dict:
    return {"status": "ok", "model": "tiny", "queue": {"pending": 2}, "upscaler": "off", "detail": None,
            "workers": [{"id": i, "device": d, "state": "ready"} for i, d in enumerate(devices)]}


def test_health_counts_distinct_gpus_not_workers():
    shared = health_from(workers_on("cuda:0", "cuda:0", "cuda:0"))
    assert (shared.gpus, shared.workers) == (1, 3)
    assert status_meta(shared).startswith("Running on 1 GPU, 3 pictures at a time")
    assert health_from(workers_on("cuda:0", "cuda:1", "cuda:1")).gpus == 2
    assert health_from(workers_on("mps", "mps:0")).gpus == 1
    assert status_meta(health_from(workers_on("cuda:0"))).startswith("Running on 1 GPU · 2 images in queue")
    cpu = health_from(workers_on("cpu", "cpu"))
    assert cpu.gpus == 0 and status_meta(cpu).startswith("Running on the processor, 2 pictures at a time")


def test_health_says_when_upscaling_can_only_fail():
    assert "not switched on" in health_from(workers_on("cpu")).upscale_refusal
    assert health_from(workers_on("cpu") | {"upscaler": "replicate"}).upscale_refusal is None
    assert "offline" in Health("offline", "Offline").upscale_refusal
    assert Health("error", "Error", "500").upscale_refusal is None, "unknown: let the backend answer"
    assert "refused this app's API key" in Health("refused", "Key refused").upscale_refusal


SHOW_SETTINGS = """
import streamlit as st
from frontend.settings import load_settings
s = load_settings()
st.text(s.backend_url)
st.text(s.api_key or "-")
st.text(repr(s))
"""


def test_settings_read_secrets_first_then_the_environment_and_never_show_secrets(monkeypatch):
    monkeypatch.setenv("BACKEND_URL", "http://from-env:8000/")
    monkeypatch.setenv("API_KEY", "env-key-123")
    at = AppTest.from_string(SHOW_SETTINGS).run()
    assert [t.value for t in at.text][:2] == ["http://from-env:8000", "env-key-123"]
    at = AppTest.from_string(SHOW_SETTINGS)
    at.secrets["API_KEY"] = "secret-key-456"
    at.run()
    backend_url, api_key, shown = (t.value for t in at.text)
    assert backend_url == "http://from-env:8000" and api_key == "secret-key-456"
    assert "secret-key-456" not in shown and "backend_url" in shown
