"""A GPU node (EXECUTOR=celery): `python -m backend.node [--name NAME]`. It opens no port: it connects
out to the broker at BROKER_URL, takes a batch when a GPU is free, writes the images to storage and
reports back on the events stream (backend.gpu.celery_app).

One Celery worker with a prefork pool of WORKERS processes (one per visible GPU; one on CPU). Process
i is pinned to GPU i and loads the pipeline once, before it takes any work; LoRAs stay cached in it.
Why one worker with a pool rather than one worker per GPU: a GPU process that dies mid-image (kill -9, a
CUDA crash) is seen by its parent at once, and Celery sends its task again (retry_on_worker_lost) to the
next free GPU of any node, without waiting for the broker's visibility timeout. A node that vanishes
whole (switched off) cannot say so: its heartbeats name the task in hand, and the backend sends that task
again once they have stopped for half a minute (backend.gpu.celery_rescue); the broker's copy, redelivered
after the visibility timeout, is then dropped.

The node consumes the model's queue only once its first GPU process is ready, so a node still loading
holds no work back. Its workers are named `<node>/<n>`; two live nodes never share a name. It also
consumes a queue of its own (`showroom.node.<name>`): the backend sends a batch there when the node's
heartbeats say it is idle and holds the batch's LoRAs (the heartbeat lists them), and moves it to the
shared queue if the node does not take it at once (backend.gpu.celery_routing).
"""

import argparse
import json
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from billiard.exceptions import WorkerLostError
from celery import signals
from celery.exceptions import Reject, TimeLimitExceeded

from backend.gpu import celery_app as ca
from backend.gpu import celery_rescue as rescue
from backend.gpu import executor as ev
from backend.gpu import messages as m

log = logging.getLogger("showroom.node")
MAX_RETRIES = 1       # a batch whose GPU process died is run once more, then its images fail (as locally)
CANCEL_POLL_S = 0.3   # how often a running batch looks for its job's cancel flag


@dataclass(frozen=True)
class Node:
    """What the main process settles before the GPU processes are forked; they inherit it."""
    name: str
    instance: str
    hostname: str
    workers: int
    settings: object
    # Set by a GPU process that found the node's name taken (shared memory, inherited by the fork): the main
    # process then starts the node again rather than leave it stopped.
    name_lost: object = field(default_factory=lambda: multiprocessing.Value("b", 0, lock=False))


NODE: Node | None = None
GPU: "Gpu | None" = None  # in a GPU process: its pipeline and state
_reporting: dict = {}     # the main process's redis client and storage, made on first use


def _short(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".strip()
    return text if len(text) <= 500 else text[:497] + "..."


class Gpu:
    """One GPU process: its pipeline, its state, and a heartbeat thread that reports both."""

    def __init__(self, node: Node, index: int):
        self.node, self.index, self.settings = node, index, node.settings
        self.id = f"{node.name}/{index}"
        self.redis = ca.redis_client(self.settings)
        self.state, self.device, self.error, self.native_size = "starting", "unknown", None, None
        self.gen = self.storage = None
        self.tasks = 0
        self.task: dict | None = None  # the task it runs, as its heartbeat names it (backend.gpu.celery_rescue)
        self._loras: list[str] = []
        self.beat()
        threading.Thread(target=self._beat_forever, name="heartbeat", daemon=True).start()

    def load(self) -> None:
        from backend.gpu.worker import load_generator

        started = time.perf_counter()
        self.device, self.storage, self.gen = load_generator(self.settings, self.index, self.node.workers,
                                                             f"node-{self.index}")
        self.native_size = self.gen.native_size
        load_s = time.perf_counter() - started
        self.set_state("ready")
        ca.publish(self.redis, ev.WorkerReady(self.id, load_s))
        log.info("%s ready on %s in %.1fs", self.id, self.device, load_s)

    # ----- heartbeats -----
    def set_state(self, state: str) -> None:
        self.state = state
        self.beat()

    def beat(self) -> None:
        beat = {"device": self.device, "state": self.state, "model": self.settings.model_id, "pid": os.getpid(),
                "native_size": self.native_size, "error": self.error, "loras": self.held_loras(), "task": self.task,
                "ts": time.time()}
        try:
            if not ca.renew_name(self.redis, self.node.name, self.node.instance):
                self._name_taken()
                return
            self.redis.hset(ca.WORKERS, self.id, json.dumps(beat))
        except Exception as e:  # the broker is away: the next beat says it again
            log.warning("%s: heartbeat not sent: %s", self.id, _short(e))

    def _name_taken(self) -> None:
        """Another node took this one's name while it was cut off: its heartbeats would be read as that
        node's. It stops (warm: running tasks end, the rest go back to the broker), and its main process
        starts it again, which takes a free name (`<name>-2`)."""
        if not self.node.name_lost.value:  # one stop is enough, whichever GPU process sees it first
            self.node.name_lost.value = 1
            log.error("%s: node name %s was taken by another node while this one could not reach the broker; "
                      "this node stops", self.id, self.node.name)
            os.kill(os.getppid(), signal.SIGTERM)

    def held_loras(self) -> list[str]:
        """The LoRAs this GPU has loaded, by catalog name: the backend sends a batch needing them here first."""
        try:
            self._loras = sorted({name for name, _version in self.gen.adapters.loaded}) if self.gen else []
        except RuntimeError:  # the cache changed under the heartbeat thread: say what it said last time
            pass
        return self._loras

    def _beat_forever(self) -> None:
        while True:
            time.sleep(ca.HEARTBEAT_S)
            self.beat()

    # ----- the tasks -----
    def generate(self, request, payload: dict, model_id: str) -> None:
        settings = self.settings
        if model_id != settings.model_id:
            self._refuse(request, model_id)
        job_id, indices = payload["job_id"], tuple(payload["indices"])
        if self._canceled(job_id):
            ca.publish(self.redis, ev.ImagesCanceled(job_id, indices))
            return
        self.tasks += 1
        task = ca.task_from_payload(payload, self.tasks)
        stored = {i for i, key in zip(task.indices, task.keys) if self._stored(key)}
        for index in sorted(stored):  # made before a lost worker could report it: never made twice
            log.info("%s: job %s image %d already stored", self.id, job_id, index)
            ca.publish(self.redis, ev.ImageSucceeded(job_id, index))
        task = _without(task, stored)
        if not task.indices:
            return
        from backend.gpu.worker import _run_task

        log.info("%s: job %s images %s (attempt %d)", self.id, job_id, list(task.indices), request.retries + 1)
        self.set_state("busy")
        try:
            _run_task(self.gen, self.storage, task, Reporter(self, task), CancelFlag(self, task),
                      settings.storage_retry_s)
        finally:
            self.set_state("ready")

    def upscale(self, request_id: str, source_key: str, target_key: str) -> None:
        from backend.upscale.service import run_upscale

        self.set_state("busy")
        error = None
        try:
            run_upscale(self.settings.model_copy(update={"upscaler": "local"}), source_key, target_key, gpu=self.index)
        except Exception as e:
            log.exception("%s: upscale of %s failed", self.id, source_key)
            error = _short(e)
        finally:
            self.set_state("ready")
        ca.publish(self.redis, ca.UpscaleDone(request_id, error))

    @contextmanager
    def running(self, request):
        """The task in hand, named in the heartbeat while it runs; None when the backend sent it again
        elsewhere (its node was taken for lost): then it is acknowledged and nothing is done."""
        try:
            superseded = self.redis.get(rescue.superseded_key(request.id))
        except Exception as e:  # unknown: run it (a copy makes the same pixels; stored images are skipped)
            log.warning("%s: superseded flag unreadable: %s", self.id, _short(e))
            superseded = None
        if superseded:
            log.warning("%s: task %s was sent again as %s while this node was taken for lost: dropped", self.id,
                        request.id, superseded)
            yield False
            return
        self.task = rescue.running(request)
        try:
            self.redis.set(rescue.kwargs_key(request.id), json.dumps(request.kwargs), ex=rescue.SUPERSEDED_TTL_S)
        except Exception as e:  # without it a vanished node's task waits for the visibility timeout
            log.warning("%s: task %s not described for a rescue: %s", self.id, request.id, _short(e))
        self.beat()  # named at once: a node that vanishes in its first seconds is seen too
        try:
            yield True
        finally:
            self.task = None
            self.beat()
            try:
                self.redis.delete(rescue.kwargs_key(request.id))
            except Exception:  # it expires in a day
                pass

    def train(self, request, payload: dict, model_id: str, target: int) -> None:
        """One chunk of a training: resume from the newest stored checkpoint, train to `target`, store its
        checkpoint and send the next chunk (once), or, at the last step, store the LoRA and say so."""
        from backend.gpu.worker import _free_memory
        from backend.lora.worker_training import checkpoint_step, lora_result_key, newest_checkpoint, run_training

        if model_id != self.settings.model_id:
            self._refuse(request, model_id)
        self.tasks += 1
        task = ca.train_from_payload(payload, self.tasks)
        if self.storage.exists(lora_result_key(task.training_id)):  # a copy of a chunk of a finished training
            log.info("%s: training %s is finished already", self.id, task.training_id)
            ca.publish(self.redis, ev.TrainingSucceeded(task.training_id, {"until": task.steps}))
            return
        newest = newest_checkpoint(self.storage, task.training_id)
        start = checkpoint_step(newest) if newest else 0
        until = task.steps if target >= task.steps else max(target, start)  # a chunk done before: on to the next
        ca.publish(self.redis, ev.TrainingStarted(task.training_id, self.id))
        log.info("%s: training %s, steps %d to %d of %d (attempt %d)", self.id, task.training_id, start, until,
                 task.steps, request.retries + 1)
        last = [0.0]

        def on_step(step: int, steps: int, loss: float) -> None:
            if time.monotonic() - last[0] >= 1 or step == steps:  # a few events a second at most
                last[0] = time.monotonic()
                ca.publish(self.redis, ev.TrainingProgress(task.training_id, step, steps, loss))

        work = Path(self.settings.showroom_cache) / f"node-{self.index}" / f"training-{task.training_id}"
        self.set_state("busy")
        try:
            info = run_training(self.settings.model_id, self.storage, self.device, task, work, on_step,
                                until=until) if until > start or until == task.steps else {"until": until}
        finally:
            self.set_state("ready")
            _free_memory()
        if until >= task.steps:
            ca.publish(self.redis, ev.TrainingSucceeded(task.training_id, info))
            return
        following = min(task.steps, target + ca.chunk_steps(task))  # from the target: every copy agrees
        key = ca.chunk_key(task.training_id, following)
        if ca.claim_chunk(self.redis, key, request.id, superseded=rescue.superseded_key):
            limit = ca.longest_task_s(self.settings)
            ca.app.send_task(ca.TRAIN, kwargs={"task": payload, "model_id": model_id, "target": following},
                             queue=request.delivery_info.get("routing_key") or ca.image_queue(model_id),
                             soft_time_limit=limit, time_limit=limit + ca.HARD_LIMIT_MARGIN_S)
            ca.chunk_sent(self.redis, key, request.id)
        else:
            log.info("%s: training %s, the chunk to step %d was sent before", self.id, task.training_id, following)

    def _refuse(self, request, model_id: str):
        reason = (f"node {self.node.name} runs MODEL_ID={self.settings.model_id!r} but the task is for "
                  f"{model_id!r}: it stops taking work from that queue")
        log.error("%s", reason)
        queue = request.delivery_info.get("routing_key")
        if queue != ca.node_queue(self.node.name):  # its own queue stays open: the backend moves such a batch on
            ca.app.control.cancel_consumer(queue, destination=[self.node.hostname])
        raise Reject(reason, requeue=True)

    def _canceled(self, job_id: str) -> bool:
        try:
            return bool(self.redis.exists(ca.cancel_key(job_id)))
        except Exception as e:  # unknown: go on; the running batch looks again
            log.warning("%s: cancel flag unreadable: %s", self.id, _short(e))
            return False

    def _stored(self, key: str) -> bool:
        try:
            return self.storage.exists(key)
        except Exception:
            return False  # unknown: make it (a write of the same image is complete either way)


def _without(task: m.Task, indices: set[int]) -> m.Task:
    keep = [n for n, index in enumerate(task.indices) if index not in indices]

    def pick(values: tuple) -> tuple:
        return tuple(values[n] for n in keep) if values else values

    return replace(task, indices=pick(task.indices), seeds=pick(task.seeds), keys=pick(task.keys),
                   preview_keys=pick(task.preview_keys))


class Reporter:
    """Stands in for the pipe of backend.gpu.worker: its messages become the executor's events on the stream."""

    def __init__(self, gpu: Gpu, task: m.Task):
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

    def __init__(self, gpu: Gpu, task: m.Task):
        self.gpu, self.task = gpu, task
        self.checked, self.canceled = 0.0, False

    @property
    def value(self) -> int:
        if not self.canceled and time.monotonic() - self.checked > CANCEL_POLL_S:
            self.checked = time.monotonic()
            self.canceled = self.gpu._canceled(self.task.job_id)
        return self.task.task_id if self.canceled else -1


# ----- Celery tasks and signals -----
@ca.app.task(name=ca.GENERATE, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=MAX_RETRIES,
              default_retry_delay=0)
def generate(self, task: dict, model_id: str, rescues: int = 0) -> None:
    if GPU is None or GPU.gen is None:
        raise Reject("this GPU process has no pipeline", requeue=True)
    with GPU.running(self.request) as wanted:
        if wanted:
            GPU.generate(self.request, task, model_id)


@ca.app.task(name=ca.UPSCALE, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=MAX_RETRIES,
              default_retry_delay=0)
def upscale(self, request_id: str, source_key: str, target_key: str, rescues: int = 0) -> None:
    if GPU is None or GPU.gen is None:
        raise Reject("this GPU process has no pipeline", requeue=True)
    with GPU.running(self.request) as wanted:
        if wanted:
            GPU.upscale(request_id, source_key, target_key)


@ca.app.task(name=ca.TRAIN, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=MAX_RETRIES,
              default_retry_delay=0)
def train(self, task: dict, model_id: str, target: int, rescues: int = 0) -> None:
    if GPU is None or GPU.gen is None:
        raise Reject("this GPU process has no pipeline", requeue=True)
    with GPU.running(self.request) as wanted:
        if wanted:
            GPU.train(self.request, task, model_id, target)


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
        GPU.error = f"could not load model {NODE.settings.model_id!r}: {_short(e)}"
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
        reason = f"node {NODE.name}: {_short(exception)}; it was the second try"
    elif isinstance(exception, TimeLimitExceeded):
        reason = f"node {NODE.name}: timed out and was stopped (IMAGE_TIMEOUT_S={NODE.settings.image_timeout_s:g})"
    else:
        reason = f"node {NODE.name}: {_short(exception)}"
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


# ----- the entry point -----
def main(argv: list[str] | None = None) -> None:
    global NODE
    parser = argparse.ArgumentParser(prog="python -m backend.node", description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", help="this node's name in worker ids (<name>/<n>); default: the host name")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # it logs whole URLs: a webhook's may hold a token

    from backend.config import get_settings
    from backend.gpu.devices import visible_gpus

    settings = get_settings()
    if settings.broker_url is None:
        sys.exit("BROKER_URL is not set: a node pulls its work from the backend's broker "
                 "(redis://:password@host:port/0); see docs/NODES.md")
    workers = settings.worker_count(visible_gpus(settings.cuda_visible_devices))
    instance = uuid.uuid4().hex
    _reporting["redis"] = ca.redis_client(settings)
    name = ca.claim_name(_redis(), args.name or socket.gethostname(), instance)
    NODE = Node(name, instance, f"{name}@{socket.gethostname()}", workers, settings)
    backend_model = _redis().get(ca.MODEL)
    if backend_model and backend_model != settings.model_id:
        log.error("the backend runs MODEL_ID=%r but this node runs %r: it will be given no work until they match",
                  backend_model, settings.model_id)
    log.info("node %s: %d GPU process(es), model %s", name, workers, settings.model_id)
    app = ca.configure(settings)
    try:
        app.worker_main(["worker", "--pool=prefork", f"--concurrency={workers}", f"--hostname={NODE.hostname}",
                         f"--queues={ca.node_queue(name)}", "--loglevel=INFO", "--optimization=fair",
                         "--without-gossip", "--without-mingle"])
    finally:
        _release_name(name, instance)
    if NODE.name_lost.value:  # its GPU processes stopped it: start again, as a new node with a free name
        log.error("node name %s was taken by another node while this one was cut off; starting again", name)
        os.execv(sys.executable, [sys.executable, "-m", "backend.node", *(sys.argv[1:] if argv is None else argv)])
    failed = _load_errors(name, workers)
    if failed:
        sys.exit(f"node {name} stopped: {failed[0]}")


def _load_errors(name: str, workers: int) -> list[str]:
    """What the node's GPU processes said when they could not load the model (from their last heartbeats)."""
    try:
        beats = _redis().hmget(ca.WORKERS, [f"{name}/{i}" for i in range(workers)])
    except Exception:
        return []
    return [json.loads(b)["error"] for b in beats if b and json.loads(b).get("error")]


def _release_name(name: str, instance: str) -> None:
    """A node that stops cleanly frees its name at once (one that dies frees it STALE_S later)."""
    try:
        if _redis().get(ca.name_key(name)) == instance:
            _redis().delete(ca.name_key(name))
    except Exception as e:
        log.warning("node name %s not released (%s); it is free again in %d s", name, e, ca.STALE_S)


if __name__ == "__main__":
    main()
