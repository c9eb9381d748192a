"""What stands in, on a node, for the local worker's pipe and cancel value (backend.gpu.worker): the same
`_run_task` runs a batch, its messages become the executor's events on the Redis stream, and its cancel
value is the job's cancel flag in Redis."""

import logging
import time
from typing import TYPE_CHECKING

from backend.gpu import celery_app as ca
from backend.gpu import executor as ev
from backend.gpu import messages as m

if TYPE_CHECKING:
    from backend.node.gpu import Gpu

log = logging.getLogger("showroom.node")
CANCEL_POLL_S = 0.3   # how often a running batch looks for its job's cancel flag


class Reporter:
    """Stands in for the pipe of backend.gpu.worker: its messages become the executor's events on the stream."""

    def __init__(self, gpu: "Gpu", task: m.Task):
        self.gpu, self.task = gpu, task
        self.open = set(task.indices)

    def send(self, msg: m.FromWorker) -> None:
        task, gpu = self.task, self.gpu
        events = []
        match msg:
            case m.Started() | m.Progress() | m.Preview():
                events.append(ev.image_event(msg, task, gpu.id))
            case m.ImageDone(index=index):
                self.open.discard(index)
                log.info("%s: job %s image %d made", gpu.id, task.job_id, index)
                events.append(ev.image_event(msg, task, gpu.id))
            case m.ImageFailed(index=index, error=error):
                self.open.discard(index)
                if "SoftTimeLimitExceeded" in error:  # Celery's soft limit: IMAGE_TIMEOUT_S x the batch
                    limit = gpu.settings.image_timeout_s
                    error = f"timed out after {limit * len(task.indices):.0f} s (IMAGE_TIMEOUT_S={limit:g})"
                events.append(ev.ImageFailed(task.job_id, index, error))
            case m.Done(canceled=canceled, seconds=seconds):
                for index in sorted(self.open):
                    events.append(ev.ImagesCanceled(task.job_id, (index,)) if canceled else ev.ImageFailed(
                        task.job_id, index, "the worker finished without reporting this image"))
                events.append(ev.BatchFinished(seconds, len(task.indices)))
        for event in events:
            ca.publish(gpu.redis, event)  # redis-py retries a dropped connection; a lost progress event costs nothing


class CancelFlag:
    """Stands in for the worker's shared cancel value: reads the job's cancel flag, at most every CANCEL_POLL_S."""

    def __init__(self, gpu: "Gpu", task: m.Task):
        self.gpu, self.task = gpu, task
        self.checked, self.canceled = 0.0, False

    @property
    def value(self) -> int:
        if not self.canceled and time.monotonic() - self.checked > CANCEL_POLL_S:
            self.checked = time.monotonic()
            self.canceled = self.gpu.job_canceled(self.task.job_id)
        return self.task.task_id if self.canceled else -1
