"""A GPU process of a node: the Node record it inherits from the main process, and `Gpu`, which holds its
pipeline and state, beats its heartbeat and runs the tasks Celery hands it (backend.node.tasks).

It runs the same code as a local worker (backend.gpu.worker); what stands in for that worker's pipe and
cancel value is in backend.node.bridge.
"""

import json
import logging
import multiprocessing
import os
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from celery.exceptions import Reject

from backend.gpu import celery_app as ca
from backend.gpu import celery_rescue as rescue
from backend.gpu import executor as ev
from backend.gpu import messages as m
from backend.node.bridge import CANCEL_POLL_S, CancelFlag, Reporter

log = logging.getLogger("showroom.node")


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


def short(e: BaseException) -> str:
    """An exception as one line of at most 500 characters, for logs, heartbeats and events."""
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
            log.warning("%s: heartbeat not sent: %s", self.id, short(e))

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
        if self.job_canceled(job_id):
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
        try:
            ca.publish(self.redis, ca.UpscaleStarted(request_id))
        except Exception as e:  # only the word "running" is lost: the upscale itself goes on
            log.warning("%s: could not report the upscale started: %s", self.id, short(e))
        error = None
        try:
            run_upscale(self.settings.model_copy(update={"upscaler": "local"}), source_key, target_key, gpu=self.index)
        except Exception as e:
            log.exception("%s: upscale of %s failed", self.id, source_key)
            error = short(e)
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
            log.warning("%s: superseded flag unreadable: %s", self.id, short(e))
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
            log.warning("%s: task %s not described for a rescue: %s", self.id, request.id, short(e))
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
        from backend.lora.worker_training import (
            TrainingStopped,
            checkpoint_step,
            lora_result_key,
            newest_checkpoint,
            run_training,
        )

        if model_id != self.settings.model_id:
            self._refuse(request, model_id)
        self.tasks += 1
        task = ca.train_from_payload(payload, self.tasks)
        if self.storage.exists(lora_result_key(task.training_id)):  # a copy of a chunk of a finished training
            log.info("%s: training %s is finished already", self.id, task.training_id)
            ca.publish(self.redis, ev.TrainingSucceeded(task.training_id, {"until": task.steps}))
            return
        if self._training_stopped(task.training_id):
            log.info("%s: training %s was stopped; its chunk to step %d is dropped", self.id, task.training_id, target)
            return
        newest = newest_checkpoint(self.storage, task.training_id)
        start = checkpoint_step(newest) if newest else 0
        until = task.steps if target >= task.steps else max(target, start)  # a chunk done before: on to the next
        ca.publish(self.redis, ev.TrainingStarted(task.training_id, self.id))
        log.info("%s: training %s, steps %d to %d of %d (attempt %d)", self.id, task.training_id, start, until,
                 task.steps, request.retries + 1)
        last, looked = [0.0], [time.monotonic()]

        def on_step(step: int, steps: int, loss: float) -> None:
            if time.monotonic() - looked[0] >= CANCEL_POLL_S:
                looked[0] = time.monotonic()
                if self._training_stopped(task.training_id):
                    raise TrainingStopped(f"stopped at step {step}")
            if time.monotonic() - last[0] >= 1 or step == steps:  # a few events a second at most
                last[0] = time.monotonic()
                ca.publish(self.redis, ev.TrainingProgress(task.training_id, step, steps, loss))

        work = Path(self.settings.showroom_cache) / f"node-{self.index}" / f"training-{task.training_id}"
        self.set_state("busy")
        info = {"until": until}
        try:
            if until > start or until == task.steps:
                info = run_training(self.settings.model_id, self.storage, self.device, task, work, on_step,
                                    until=until, remover_model=self.settings.bg_removal_model)
        except TrainingStopped as e:  # the backend has ended it already: no next chunk, no event
            log.info("%s: training %s %s", self.id, task.training_id, e)
            return
        finally:
            self.set_state("ready")
            _free_memory()
        if until >= task.steps:
            ca.publish(self.redis, ev.TrainingSucceeded(task.training_id, info))
            return
        self._send_next_chunk(request, task, payload, model_id, target)

    def _send_next_chunk(self, request, task: m.TrainTask, payload: dict, model_id: str, target: int) -> None:
        """The chunk after the one to `target`, sent once whichever copy of this chunk gets here first."""
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

    def _training_stopped(self, training_id: str) -> bool:
        try:
            return bool(self.redis.exists(ca.stop_training_key(training_id)))
        except Exception as e:  # unknown: go on; the next look may answer
            log.warning("%s: stop flag of training %s unreadable: %s", self.id, training_id, short(e))
            return False

    def job_canceled(self, job_id: str) -> bool:
        try:
            return bool(self.redis.exists(ca.cancel_key(job_id)))
        except Exception as e:  # unknown: go on; the running batch looks again
            log.warning("%s: cancel flag unreadable: %s", self.id, short(e))
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
