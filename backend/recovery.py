"""At start-up, take back the jobs a previous run left unfinished, so no manifest stays open forever."""

import logging

from backend.errors import ShowroomError
from backend.models import Status
from backend.storage import StorageError

log = logging.getLogger("showroom.recovery")
SCAN_LIMIT = 2000  # the newest jobs; older ones were surely finished by an earlier run


def _pending_upscales(job) -> bool:
    return any(img.upscale and not img.upscale.status.is_terminal() for img in job.images)


def recover(store, scheduler, jobs, upscales=None) -> int:
    """Queue again what was `queued` or `running`; fail images whose LoRA is gone; restart upscales
    left unfinished. Returns the number of jobs taken back."""
    taken = 0
    try:
        ids = store.ids()[:SCAN_LIMIT]
    except StorageError as e:
        log.error("could not scan for unfinished jobs: %s", e)
        return 0
    for job_id in ids:
        try:
            job = store.load(job_id)
        except Exception:
            continue
        if _pending_upscales(job):
            if upscales is not None:
                upscales.resume(job)
            else:
                for img in job.images:
                    if img.upscale and not img.upscale.status.is_terminal():
                        img.upscale.status, img.upscale.error = Status.failed, "the upscaler is off (UPSCALER=off)"
                store.save(job)
        if job.status.is_terminal():
            continue
        try:
            loras = jobs.loras_for(job.spec)
        except ShowroomError as e:
            loras = None
            reason = f"the backend restarted and {e.detail}"
        for img in job.images:
            if img.status == Status.running:
                img.requeued()
            if loras is None and not img.status.is_terminal():
                img.failed(reason)
        job.refresh()
        store.save(job)
        if not job.status.is_terminal():
            scheduler.submit(job, loras)
            taken += 1
            log.info("job %s taken back after a restart (%d images to go)", job_id,
                     sum(not i.status.is_terminal() for i in job.images))
    return taken
