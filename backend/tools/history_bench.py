"""Does a history page, or a start-up, cost more as jobs pile up? Jobs are written to an embedded SeaweedFS
(the real manifest store, so with the index under index/), then a history page (what GET /v1/jobs reads)
and start-up recovery's scan (the real `recover`, 10 unfinished jobs among them) are timed with few
jobs and with many, and set beside the scan the index replaced (one LIST of every job folder).

    python -m backend.tools.history_bench --jobs 20,20000

Prints a table; numbers, not a pass/fail (writing 20,000 jobs takes a few minutes on 2 cores).
"""

import argparse
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from backend.contract import image_key, new_job_id
from backend.jobs.leases import Leases
from backend.jobs.manifests import ManifestStore
from backend.jobs.recovery import recover
from backend.models import ImageRecord, JobManifest, ResolvedSpec, Status, now
from backend.storage import S3Storage
from backend.tools.seaweed import SeaweedS3

UNFINISHED = 10
PAGE = 24


def make_job(finished: bool) -> JobManifest:
    job_id = new_job_id()
    spec = ResolvedSpec(prompt="a bottle on a beach", negative_prompt="", product=None, template=None, loras=[],
                        num_images=1, steps=30, guidance_scale=7.5, width=512, height=512, seed=1, strength=0.5)
    status = Status.succeeded if finished else Status.queued
    return JobManifest(id=job_id, created_at=now(), updated_at=now(), status=status, spec=spec, input_key=None,
                       images=[ImageRecord(index=0, key=image_key(job_id, 0), seed=1, status=status)])


class CountingExecutor:
    """What recovery hands the jobs it takes back to: it only counts them."""

    def __init__(self):
        self.taken: list[str] = []

    def holds(self, job_id: str) -> bool:
        return job_id in self.taken

    def submit(self, job, loras) -> None:
        self.taken.append(job.id)


class NoLoras:
    def loras_for(self, spec) -> tuple:
        return ()


def fill(store: ManifestStore, total: int, threads: int = 16) -> float:
    """Write jobs until the bucket holds `total`, UNFINISHED of them first (the oldest: the ones the old scan,
    which read only the newest 2,000, could miss). Returns seconds taken."""
    started = time.perf_counter()
    have = len(store.ids())
    todo = [make_job(finished=have + i >= UNFINISHED) for i in range(max(0, total - have))]
    with ThreadPoolExecutor(threads) as pool:
        for ok in pool.map(store.create, todo):
            if not ok:
                raise RuntimeError(f"a write failed: {store.storage_error}")
    return time.perf_counter() - started


def timed(call, repeats: int) -> float:
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


def measure(store: ManifestStore, repeats: int) -> dict:
    leases = Leases(store.storage)  # as a start-up does: each unfinished job is claimed (a GET and a PUT)
    def recovery():
        executor = CountingExecutor()
        taken = recover(store, executor, NoLoras(), leases=leases)
        if taken != UNFINISHED:
            raise RuntimeError(f"recovery took back {taken} jobs, expected {UNFINISHED}")
        for job_id in executor.taken:  # as they were: the next run of the scan finds them again
            store.forget(job_id)

    return {"history_page_s": timed(lambda: store.recent(PAGE), repeats),
            "recovery_s": timed(recovery, repeats),
            "list_every_job_s": timed(store.ids, max(1, repeats // 2))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=lambda s: [int(x) for x in s.split(",")], default=[20, 20000])
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = SeaweedS3(Path(tmp) / "seaweed", "history", "bench", "bench-secret").start()
        try:
            storage = S3Storage("history", "bench", endpoint_url=server.endpoint, access_key="bench",
                                secret_key="bench-secret")
            store = ManifestStore(storage).start()
            rows = []
            for total in sorted(args.jobs):
                wrote = fill(store, total)
                store.flush()
                fresh = ManifestStore(storage).start()  # as after a restart: nothing in memory
                rows.append((total, wrote, measure(fresh, args.repeats)))
                fresh.close()
                print(f"{total} jobs written ({wrote:.0f} s)", flush=True)
            store.close()
        finally:
            server.stop()
    print(f"\n| jobs in the bucket | history page ({PAGE} jobs) | start-up recovery ({UNFINISHED} unfinished) "
          "| listing every job folder (the scan the index replaced) |")
    print("| ---: | ---: | ---: | ---: |")
    for total, _, m in rows:
        print(f"| {total:,} | {m['history_page_s'] * 1000:.0f} ms | {m['recovery_s'] * 1000:.0f} ms "
              f"| {m['list_every_job_s'] * 1000:.0f} ms |")
    first, last = rows[0][2], rows[-1][2]
    print(f"\n{rows[-1][0]:,} against {rows[0][0]:,} jobs: "
          f"history page x{last['history_page_s'] / first['history_page_s']:.2f}, "
          f"recovery x{last['recovery_s'] / first['recovery_s']:.2f}, "
          f"listing every job x{last['list_every_job_s'] / first['list_every_job_s']:.1f}")


if __name__ == "__main__":
    main()
