"""The generator's measured speed and price: GPU time from a job's image times, a speed from finished jobs."""

import pytest

from frontend import speed
from frontend.jobs import job_view
from frontend.settings import _price

T0 = "2026-12-01T10:00:00+00:00"


def at(seconds: float) -> str:
    return f"2026-12-01T10:{int(seconds) // 60:02d}:{seconds % 60:06.3f}+00:00"


def job(runs: list[tuple[str, float, float]], mode: str = "generate", status: str = "succeeded", width: int = 512,
        height: int = 512, steps: int = 30):
    """A finished job whose image i ran on runs[i] = (worker, start s, end s)."""
    images = [{"index": i, "key": f"jobs/j/{i}.png", "seed": i, "status": status, "worker": worker,
               "started_at": at(start), "finished_at": at(end)} for i, (worker, start, end) in enumerate(runs)]
    return job_view({"id": "j", "status": status, "created_at": T0, "updated_at": T0, "images": images,
                     "spec": {"prompt": "p", "mode": mode, "width": width, "height": height, "steps": steps,
                              "num_images": len(runs)}})


def test_a_batch_on_one_worker_counts_once_and_two_workers_add_up():
    assert speed.gpu_seconds(job([("0", 0, 8), ("0", 0, 8), ("0", 0, 8.5), ("0", 0, 8.5)])) == pytest.approx(8.5)
    assert speed.gpu_seconds(job([("0", 0, 4), ("1", 0, 4)])) == pytest.approx(8)
    assert speed.gpu_seconds(job([("0", 0, 4), ("0", 4, 8), ("0", 10, 11)])) == pytest.approx(9), \
        "one after the other on one worker: the gap between them is not the job's"
    assert speed.gpu_seconds(job([("0", 0, 6), ("0", 2, 5), ("0", 4, 9)])) == pytest.approx(9)


def test_a_job_without_all_its_times_has_no_gpu_time():
    unfinished = job([("0", 0, 4), ("0", 0, 4)])
    unfinished.images[1].finished_at = None
    assert speed.gpu_seconds(unfinished) is None
    backwards = job([("0", 5, 4)])
    assert speed.gpu_seconds(backwards) is None


def test_per_picture_divides_by_the_work_in_standard_pictures():
    assert speed.per_picture(job([("0", 0, 8)] * 4)) == pytest.approx(2.0)
    assert speed.per_picture(job([("0", 0, 8)] * 2, width=1024, height=1024)) == pytest.approx(1.0), \
        "a 1024 x 1024 picture is 4 standard ones"
    assert speed.per_picture(job([("0", 0, 8)], status="failed")) is None, "only wholly finished jobs"


def test_the_speed_is_the_median_of_recent_jobs_of_the_mode_when_there_are_enough():
    jobs = [job([("0", 0, 2)]), job([("0", 0, 40)]), job([("0", 0, 3)]),
            job([("0", 0, 1)], mode="restyle"), job([("0", 0, 1.5)], mode="restyle")]
    every = speed.measured(jobs, "place")
    assert every == speed.Speed(2.0, 5, None), "one slow first job does not move the median"
    assert speed.measured(jobs, "generate") == speed.Speed(3.0, 3, "generate")
    assert speed.measured(jobs, "restyle") == speed.Speed(1.25, 2, "restyle")
    assert speed.measured(jobs[:1], "generate") is None, "one job says too little"
    assert speed.measured([job([("0", 0, 2)], status="canceled")] * 5) is None


def test_a_jobs_time_is_shared_by_the_workers_its_pictures_spread_over():
    s = speed.Speed(2.0, 5, None)
    assert speed.wall_seconds(s, asked=4, num_images=4, workers=1) == 8
    assert speed.wall_seconds(s, asked=4, num_images=4, workers=4) == 2
    assert speed.wall_seconds(s, asked=4, num_images=1, workers=4) == 8, "one picture runs on one worker"
    assert speed.wall_seconds(s, asked=4, num_images=4, workers=0) == 8, "no worker yet: as if one"


def test_prices_and_durations_read_as_estimates():
    assert speed.price(3600, 0.45) == "$0.45"
    assert speed.price(8, 0.45) == "$0.001"
    assert speed.price(10 * 3600, 2.5) == "$25.00"
    assert speed.price(0.1, 0.3) == "under $0.0001"
    assert speed.price(8, None) is None
    assert [speed.about(s) for s in (0.4, 20.4, 150, 7200, 5400)] == \
        ["under a second", "about 20 s", "about 2 min", "about 2 h", "about 1.5 h"]


@pytest.mark.parametrize(("value", "dollars"), [("0.45", 0.45), ("$1.2", 1.2), (" 2 ", 2.0), ("0", None),
                                                ("-1", None), ("cheap", None), ("nan", None), ("inf", None),
                                                (None, None)])
def test_gpu_hour_price_is_dollars_or_nothing(value, dollars):
    assert _price(value) == dollars


def test_the_jobs_measured_are_the_finished_among_the_newest_few(tmp_path):
    """A bounded look: failed and canceled jobs are passed over, never read past (History's reader may go on for
    400 manifests to fill a filtered page)."""
    import json
    import uuid

    from backend.storage import LocalStorage
    from frontend.jobs import newest_finished

    storage = LocalStorage(tmp_path)
    ids = sorted(uuid.uuid4().hex for _ in range(speed.SCAN + 6))
    statuses = ["succeeded"] * 8 + ["failed", "canceled"] * (speed.SCAN // 2 - 2) + ["succeeded"] * 2
    for job_id, status in zip(ids, statuses, strict=True):
        manifest = {"id": job_id, "status": status, "created_at": T0, "updated_at": T0, "spec": {"prompt": "p"},
                    "images": [{"index": 0, "key": f"jobs/{job_id}/0.png", "seed": 1, "status": status}]}
        storage.put(f"jobs/{job_id}/job.json", json.dumps(manifest).encode(), "application/json")
    storage.put(f"jobs/{'f' * 32}/job.json", b"not json", "application/json")  # the newest, unreadable: passed over
    found = newest_finished(storage, speed.SCAN)
    # the newest 32: the unreadable one and ids[7:], whose finished are ids[7] (the window's oldest) and the two newest
    assert [j.id for j in found] == [ids[-1], ids[-2], ids[7]], "newest first, the newest SCAN only"


def test_a_small_or_short_picture_asks_less_than_a_standard_one():
    """The queue counts any picture as at least one standard one; its time is not: a speed measured on 64 x 64
    pictures, or on 20 steps, is told by what they really ask."""
    assert speed.work(512, 512, 30, 4) == 4 and speed.work(1024, 1024, 30, 1) == 4
    assert speed.work(64, 64, 30, 1) == pytest.approx(1 / 64) and speed.work(512, 512, 15, 2) == 1
    assert speed.per_picture(job([("0", 0, 1)], width=256, height=256)) == pytest.approx(4.0)
