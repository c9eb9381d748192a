"""A node's Celery wiring: the tasks the broker hands out (generate, upscale, train, by the names in
backend.gpu.celery_app) and the worker's signals. Importing it registers the tasks and connects the handlers;
`python -m backend.node` does so before its worker starts, so the forked GPU processes have them too.

Each forked GPU process loads its pipeline in `_gpu_process_starts` and runs its tasks in its `Gpu`
(backend.node.gpu). What only the main process sees (a GPU process that died, a hard time limit) is
reported from the handlers here, through the main process's own Redis client and storage.
"""

import logging
import os
import signal

from billiard.exceptions import WorkerLostError
from celery import signals
from celery.exceptions import Reject, TimeLimitExceeded

from backend.gpu import celery_app as ca
from backend.gpu import executor as ev
from backend.node.gpu import Gpu, Node, short

log = logging.getLogger("showroom.node")
MAX_RETRIES = 1       # a batch whose GPU process died is run once more, then its images fail (as locally)

NODE: Node | None = None
GPU: Gpu | None = None    # in a GPU process: its pipeline and state
_reporting: dict = {}     # the main process's redis client and storage, made on first use


def attach(node: Node, redis) -> None:
    """In the main process, before its worker starts: the node its GPU processes inherit, and the Redis
    client its signal handlers report through."""
    global NODE
    _reporting["redis"] = redis
    NODE = node


# ----- the tasks -----
TASK_OPTIONS = dict(bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=MAX_RETRIES,
                    default_retry_delay=0)


def _on_this_gpu(request, work) -> None:
    """Run `work` on this process's GPU, named in its heartbeat, unless the backend sent the task again elsewhere
    meanwhile (GPU.running); a process without a pipeline hands the task back to the broker."""
    if GPU is None or GPU.gen is None:
        raise Reject("this GPU process has no pipeline", requeue=True)
    with GPU.running(request) as wanted:
        if wanted:
            work()


@ca.app.task(name=ca.GENERATE, **TASK_OPTIONS)
def generate(self, task: dict, model_id: str, rescues: int = 0) -> None:
    _on_this_gpu(self.request, lambda: GPU.generate(self.request, task, model_id))


@ca.app.task(name=ca.UPSCALE, **TASK_OPTIONS)
def upscale(self, request_id: str, source_key: str, target_key: str, rescues: int = 0) -> None:
    _on_this_gpu(self.request, lambda: GPU.upscale(request_id, source_key, target_key))


@ca.app.task(name=ca.TRAIN, **TASK_OPTIONS)
def train(self, task: dict, model_id: str, target: int, rescues: int = 0) -> None:
    _on_this_gpu(self.request, lambda: GPU.train(self.request, task, model_id, target))


# ----- the worker's signals -----
@signals.worker_process_init.connect
def _gpu_process_starts(**kwargs) -> None:
    """In each forked GPU process: load the pipeline on GPU `index` before the pool gives it work."""
    global GPU
    from billiard.process import current_process

    index = getattr(current_process(), "index", 0)
    GPU = Gpu(NODE, index)
    try:
        GPU.load()
    except Exception as e:
        GPU.error = f"could not load model {NODE.settings.model_id!r}: {short(e)}"
        GPU.set_state("dead")
        log.exception("%s: %s; the node stops", GPU.id, GPU.error)
        os.kill(os.getppid(), signal.SIGTERM)  # a node that cannot load its model takes no work at all
        return
    # Idempotent: the first ready process opens the model's queue for the whole node.
    ca.app.control.add_consumer(ca.image_queue(NODE.settings.model_id), destination=[NODE.hostname])


@signals.worker_process_shutdown.connect
def _gpu_process_stops(**kwargs) -> None:
    # A failed one stays listed, dead with its reason, for a minute; one whose name was taken leaves the
    # heartbeat alone: it is the other node's now.
    if GPU is not None and GPU.error is None and not NODE.name_lost.value:
        try:
            GPU.redis.hdel(ca.WORKERS, GPU.id)
        except Exception:
            pass  # it is dropped from /health a minute later all the same


@signals.task_retry.connect
def _task_retried(sender=None, request=None, **kwargs) -> None:
    """In the main process, after a GPU process died mid-batch: the batch waits for the next free GPU."""
    if sender is not None and sender.name == ca.GENERATE and request is not None:
        task = request.kwargs["task"]
        _report(ev.ImagesRequeued(task["job_id"], tuple(task["indices"])))
    elif sender is not None and sender.name == ca.TRAIN and request is not None:
        _report(ev.TrainingRequeued(request.kwargs["task"]["training_id"], f"node {NODE.name} lost its GPU process"))


@signals.task_failure.connect
def _task_failed(sender=None, kwargs=None, exception=None, **extra) -> None:
    """A batch that lost its GPU process twice, or ran past its hard time limit (both seen by the main
    process), or one that raised: what is stored succeeded, the rest failed with the reason."""
    if sender is None or not kwargs:
        return
    if isinstance(exception, WorkerLostError):
        reason = f"node {NODE.name}: {short(exception)}; it was the second try"
    elif isinstance(exception, TimeLimitExceeded):
        reason = f"node {NODE.name}: timed out and was stopped (IMAGE_TIMEOUT_S={NODE.settings.image_timeout_s:g})"
    else:
        reason = f"node {NODE.name}: {short(exception)}"
    if sender.name == ca.UPSCALE:
        _report(ca.UpscaleDone(kwargs["request_id"], reason))
    elif sender.name == ca.TRAIN:
        _report(ev.TrainingFailed(kwargs["task"]["training_id"], f"training failed: {reason}"))
    elif sender.name == ca.GENERATE:
        task = kwargs["task"]
        for index, key in zip(task["indices"], task["keys"]):
            try:
                stored = _reporting_storage().exists(key)
            except Exception:  # unknown: failing it blind could fail an image whose object exists
                _report(ca.ImageUndecided(task["job_id"], index, reason))
                continue
            _report(ev.ImageSucceeded(task["job_id"], index) if stored
                    else ev.ImageFailed(task["job_id"], index, reason))


def _report(event) -> None:
    """From Celery's signal handlers: through the GPU process's client, or the main process's."""
    try:
        ca.publish(GPU.redis if GPU is not None else _redis(), event)
    except Exception:
        log.exception("could not report %r", event)


def _redis():
    """The main process's redis-py client (a GPU process has its own: redis-py pools notice the fork)."""
    if "redis" not in _reporting:
        _reporting["redis"] = ca.redis_client(NODE.settings)
    return _reporting["redis"]


def _reporting_storage():
    if "storage" not in _reporting:
        _reporting["storage"] = NODE.settings.open_storage()
    return _reporting["storage"]
