"""Run the reliability tests and write their figures into docs/RELIABILITY.md.

    python -m tests.reliability

Runs the fault-injection, load, fuzz, hostile-input and security tests against the real stack,
then records what held: load taken, faults survived, hostile inputs tried, images lost.
"""

import datetime
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "RELIABILITY.md"
SUITES = {
    "faults": "tests/backend/test_faults.py",
    "load": "tests/backend/test_load.py",
    "fuzz": "tests/backend/test_fuzz.py",
    "hostile input": "tests/backend/test_bad_input.py",
    "security": "tests/backend/test_security.py",
    "scheduler faults": "tests/backend/test_scheduler.py",
    "recovery": "tests/backend/test_recovery.py",
    "worker errors": "tests/backend/test_worker_errors.py",
    "idempotency": "tests/backend/test_idempotency.py",
    "auth gate and blank keys": "tests/unit/api/test_gate.py",
    "manifest store and index": "tests/unit/jobs/test_manifests.py",
    "webhooks and batches": "tests/backend/test_batches_webhooks_e2e.py",
    "celery executor": "tests/backend/test_celery_e2e.py",
    "undecided images (celery)": "tests/backend/test_celery_undecided.py",
    "a node switched off (celery)": "tests/backend/test_celery_rescue.py",
    "webhook sending (pinned address, deadline, no body read)": "tests/unit/jobs/test_webhooks.py",
    "settings refused without their values": "tests/unit/test_config.py",
    "training admission": "tests/unit/products/test_training_admission.py",
    "leases and conditional writes": "tests/backend/test_leases.py",
    "request bodies (size, arrival time)": "tests/unit/api/test_middleware.py",
    "late work of a deleted job": "tests/unit/jobs/test_delete_late_work.py",
}


def run() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "junit.xml"
        code = subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "junit_family=legacy",
                                f"--junitxml={report}", *SUITES.values()], cwd=REPO)
        root = ET.parse(report).getroot()
    results: dict = {name: {"passed": 0, "failed": 0} for name in SUITES}
    figures: dict[str, float] = {}
    for case in root.iter("testcase"):
        suite = next(n for n, f in SUITES.items() if case.get("classname", "").replace(".", "/") in f)
        failed = case.find("failure") is not None or case.find("error") is not None
        results[suite]["failed" if failed else "passed"] += 1
        for prop in case.iter("property"):
            name, value = prop.get("name"), float(prop.get("value"))
            value = int(value) if value.is_integer() else value
            figures[name] = figures.get(name, 0) + value if name.startswith("images_") else value
    return {"exit_code": code, "suites": results, "figures": figures}


def _s(seconds) -> str:
    return "? s" if seconds is None else f"{seconds:.2f} s"


def write(outcome: dict) -> str:
    f, s = outcome["figures"], outcome["suites"]
    lost = (f"{f.get('images_lost', '?')} of {f.get('images_checked', '?')} images checked after the load and "
            "fault tests (each must end `succeeded` with its object, or `failed` with a reason and none)")
    lines = [
        "# Reliability",
        "",
        f"Written by `python -m tests.reliability` on {datetime.date.today()} ({os.cpu_count()} CPU cores, "
        "tiny model, real SeaweedFS, real uvicorn). Every figure comes from a test that fails if the claim breaks.",
        "",
        "| what | figure |",
        "| --- | --- |",
        f"| load held | {f.get('load_submissions', '?')} concurrent submissions: {f.get('load_accepted', '?')} "
        f"accepted ({f.get('load_images', '?')} images, each succeeded with its object or failed with a reason), "
        f"{f.get('load_refused_429', '?')} refused with 429 + Retry-After, none stored |",
        f"| faults survived | {s['faults']['passed']} of {s['faults']['passed'] + s['faults']['failed']} against the "
        f"real stack (kill -9 of a worker mid-job, kill -9 of the whole backend mid-job then restart, SeaweedFS "
        f"stopped mid-job then started, SeaweedFS hung with SIGSTOP mid-job then resumed, a restart while SeaweedFS is down, "
        f"a second backend on the same bucket taking over a job and a training, an image past its time limit); {s['scheduler faults']['passed']} "
        "scheduler cases with fake workers (deaths, a device error, a model that cannot load, time limits, an "
        f"image stored just before its worker was killed, cancel); {s['recovery']['passed']} recovery cases "
        f"(storage down at boot, a scan cut short, an unreadable manifest or product record, upscales resumed once and not overwritten, a cancel before the take-back); "
        f"{s['worker errors']['passed']} worker error cases (out of memory in a batch and in one image, a cuBLAS allocation "
        "failure, a CUDA error that broke the device and one that did not, failed upload); "
        f"{s['idempotency']['passed']} idempotency cases with storage failing half-way (a write that errors after landing included) |",
        f"| hostile inputs tried | {s['hostile input']['passed'] + s['hostile input']['failed']} hand-written cases "
        f"(bad specs, broken photos, decompression bombs, path escapes, pickles, wrong keys) + "
        f"{f.get('fuzz_requests', '?')} generated requests over {f.get('fuzz_operations', '?')} operations "
        "(schemathesis `--checks all` with its stateful phase, from the OpenAPI schema): no 5xx, no mismatch |",
        f"| security checks | {s['security']['passed']} of {s['security']['passed'] + s['security']['failed']} |",
        f"| hung storage (SeaweedFS under SIGSTOP) | a submit refused with 503 in {_s(f.get('submit_refused_s'))}, "
        f"`/health` answering in {_s(f.get('health_max_s'))} at most; the job running before the stall finished |",
        f"| a GPU node switched off mid-batch (EXECUTOR=celery) | its image made by another node "
        f"{_s(f.get('node_off_to_done_s'))} after; the broker's copy, handed out again later, dropped |",
        f"| images lost | {lost} |",
        "",
        "| suite | passed | failed |",
        "| --- | --- | --- |",
        *[f"| {name} | {r['passed']} | {r['failed']} |" for name, r in s.items()],
        "",
        "## What each promise rests on",
        "",
        "- A worker that dies is noticed through its process sentinel at once; the images it held are tried "
        "once more on another worker, or failed with the exit code; a new worker is started.",
        "- At start-up the backend reads the manifests in storage and queues again what was `queued` or "
        "`running` (an image already in storage counts as made), and restarts unfinished upscales; while "
        "storage cannot be read it tries again in the background, and never takes a job of its own run.",
        "- An image is `succeeded` exactly when its object exists: a worker killed between its upload and "
        "its report still gets the image counted, not failed and not made twice.",
        "- A batch that runs out of GPU memory (cuBLAS's and cuDNN's ALLOC_FAILED included) is made one image at "
        "a time; a CUDA error after which the device no longer answers a probe makes the worker leave so its "
        "images are retried on a fresh process; one after which it answers fails only its batch.",
        "- A deleted job stays empty: an upscale or a place job's cut-out that finishes after the delete removes "
        "what it wrote, and a training that ends after its product was deleted keeps no LoRA.",
        "- The Idempotency-Key record is written before the manifest, so a retried submit never starts a "
        "second job, even when storage failed half-way through the first; a manifest write that errors is "
        "undone, so a retry never gets the ticket of a job nothing runs. The key sent again with another spec or "
        "photo is refused (422) rather than answered with a ticket for a request it did not make.",
        "- Workers retry image writes for `STORAGE_RETRY_S` with backoff; manifest writes that fail are "
        "kept and written when storage returns; `/health` says `degraded` meanwhile.",
        "- The queue is bounded (`QUEUE_MAX_IMAGES`, counted in 512x512 30-step images) and so is one job "
        "(`MAX_JOB_COST`): past them, 429 with Retry-After or 422 with the numbers. A token bucket per key "
        "and address limits submissions, uploads, trainings and upscales (`RATE_LIMIT_PER_MINUTE`).",
        "- Manifests have one writer (the manifest store): no lock is held across storage I/O, so a slow "
        "S3 stalls no request; `/health` reads the writer's last word on storage instead of calling it.",
        "- Each image has a time limit (`IMAGE_TIMEOUT_S`); cancel interrupts the running batch through "
        "the diffusers step callback.",
        "- A hung S3 (it accepts connections and never answers) is noticed by read time-outs: calls a client "
        "waits on try twice for 4 s at most; while storage fails, a submit is decided by one short probe (at most "
        "one a second) and refused with 503 and Retry-After; `/health` answers from memory; running jobs finish "
        "when storage answers again.",
        "- An image whose worker was lost while storage could not say whether its object landed stays open "
        "until storage answers, then ends `succeeded` or `failed` by what storage holds: never failed blind.",
        "- Two backends on one bucket: each keeps a heartbeat under `index/backends/` and a job's unfinished "
        "marker names its backend; a job is taken back only from a backend that is gone, by an S3 conditional "
        "write (If-Match / If-None-Match), so of two racers one wins. Known limit: a backend cut off from "
        "storage for longer than its lease (60 s) may find its jobs taken over, and an image made twice; the "
        "boxes need NTP (the lease compares wall clocks). Trainings are held the same way (`trainings/<id>/owner`): "
        "a second backend leaves a running training alone and finishes it from its checkpoint when its backend dies. "
        "A cancel or delete of a job another live backend runs is refused (409, naming it) rather than written over "
        "by that backend's next change.",
        "- A request body must arrive within 30 s plus a second per 16 KB (else 408): a client trickling a byte a "
        "second cannot hold a request open. A body that is no upload (JSON) may be 1 MB; cut-outs for requests run "
        "two at a time and trainings four per backend, the rest told to retry (429).",
        "- Webhooks go to the address that was checked (no second DNS answer can move them to a private one), an "
        "attempt ends after 15 s whatever the receiver does, its answer's body is never read, and the log and the "
        "pictures never show a receiver's path (it may hold a token). Settings refused at start-up are named, "
        "never quoted.",
        "- A GPU node's heartbeats name the task it runs: when they stop for 30 s the backend sends that task "
        "again (only the images still open) and marks the old one superseded, so a node switched off costs "
        "half a minute, not the broker's visibility timeout (90 min); a training chunk lost after it claimed "
        "the next chunk still has that chunk sent.",
        "",
        "## Who can do what",
        "",
        "| caller | `/health`, `/metrics` | `/docs`, `/openapi.json` | `/v1/*` (jobs, products, trainings, uploads) | the app |",
        "| --- | --- | --- | --- | --- |",
        "| anyone, no key (`API_KEY` set) | yes; worker error text left out | 401 | 401, answered before the body is read | only with `APP_PASSWORD` |",
        "| anyone, `API_KEY` unset, not on this machine | yes | yes | 403 | only with `APP_PASSWORD` |",
        "| a process on this machine, `API_KEY` unset | yes | yes | everything | yes (`make run` binds 127.0.0.1) |",
        "| a web page in a browser on this machine, `API_KEY` unset | yes | yes | 403 (its Host, Origin or "
        "Sec-Fetch-Site names another site: no cross-site form post, no DNS rebinding) | - |",
        "| an `API_KEY` holder | yes, with details | yes | everything, rate-limited per key and address | - |",
        "| an `APP_PASSWORD` holder | - | - | what the page does, with the backend's key | yes |",
        "",
        "There is no per-user tenancy yet: every key holder (and every app user) sees and may delete every "
        "job and product. Blank values of `API_KEY` count as unset; `PUBLIC_BIND` refuses to start without one.",
        "",
    ]
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text("\n".join(lines))
    return "\n".join(lines)


if __name__ == "__main__":
    outcome = run()
    print(write(outcome))
    sys.exit(outcome["exit_code"])
