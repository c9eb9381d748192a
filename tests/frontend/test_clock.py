"""Clock times in the viewer's own time zone, and in UTC (said so) when the browser names none known here."""

import json
import uuid
from datetime import UTC, datetime

import pytest

from backend.storage import LocalStorage
from frontend.clock import stamp
from tests.frontend.conftest import assert_no_exception, offline_url, page_text

WINTER = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
SUMMER = datetime(2026, 7, 1, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize("moment, zone, offset, shown", [
    (WINTER, "Europe/Berlin", -60, "01 Jan 11:00"),
    (SUMMER, "Europe/Berlin", -60, "01 Jul 12:00"),   # that day's daylight saving, not today's offset
    (WINTER, "Asia/Kolkata", -330, "01 Jan 15:30"),
    (WINTER, "America/New_York", 300, "01 Jan 05:00"),
    (WINTER.replace(tzinfo=None), "Asia/Tokyo", None, "01 Jan 19:00"),  # a naive time is UTC
    (WINTER, None, None, "01 Jan 10:00 UTC"),
    (WINTER, "", None, "01 Jan 10:00 UTC"),
    (WINTER, "Mars/Olympus_Mons", None, "01 Jan 10:00 UTC"),
    (WINTER, "../../etc/passwd", None, "01 Jan 10:00 UTC"),
    (WINTER, "America", None, "01 Jan 10:00 UTC"),    # a folder of zones, not a zone
    (WINTER, "Mars/Olympus_Mons", -120, "01 Jan 12:00 UTC+2"),
    (WINTER, None, 330, "01 Jan 04:30 UTC-5:30"),
    (WINTER, None, 0, "01 Jan 10:00 UTC"),
])
def test_a_time_is_shown_in_the_viewers_zone_else_says_which(moment, zone, offset, shown):
    assert stamp(moment, zone, offset) == shown


def stored_job(storage, created_at: str) -> str:
    job_id = uuid.uuid4().hex
    manifest = {"id": job_id, "created_at": created_at, "updated_at": created_at, "status": "queued",
                "input_key": None, "error": None, "spec": {"prompt": "a kettle", "num_images": 1},
                "images": [{"index": 0, "key": f"jobs/{job_id}/0.png", "seed": 5, "status": "queued"}]}
    storage.put(f"jobs/{job_id}/job.json", json.dumps(manifest).encode(), "application/json")
    return job_id


@pytest.mark.parametrize("context, shown", [({"timezone": "Asia/Kolkata", "timezone_offset": -330}, "01 Jan 15:30"),
                                            ({}, "01 Jan 10:00 UTC")])
def test_history_shows_when_a_job_started_in_the_viewers_time(tmp_path, open_app, context, shown):
    stored_job(LocalStorage(tmp_path), "2026-01-01T10:00:00.000Z")
    at = open_app({"BACKEND_URL": offline_url(), "STORAGE_URL": f"file://{tmp_path}"})
    at.context.update(context)
    at.switch_page("app_pages/history.py").run()
    assert_no_exception(at)
    meta = [line for line in page_text(at).splitlines() if "sr-job-meta" in line]
    assert len(meta) == 1 and f">{shown} · 0/1 pictures · " in meta[0], meta
