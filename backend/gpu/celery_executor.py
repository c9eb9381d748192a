"""The executor for EXECUTOR=celery: a job's images go to GPU nodes anywhere as Celery tasks, and what the
nodes report comes back on a Redis stream as the executor's own events (backend.gpu.celery_app).

The batches are cut as the local scheduler cuts them (backend.gpu.batches), over the node workers that
are up, so image i is made from seed + i in the same batches whatever the node count. This backend
writes no manifest: the events go to `on_event` (JobEvents), in stream order, from one thread; what is
in flight, and what is handed out when, is kept by backend.gpu.celery_flights.

What it must survive:
- a node lost mid-batch: Celery sends the task again (acks_late, reject/retry on worker lost); a node
  that vanishes whole has its task sent again by this backend once its heartbeat is LOST_S old
  (backend.gpu.celery_rescue), not after the visibility timeout; a node skips an image that is already
  stored and reports it succeeded;
- a backend restart: the broker keeps the tasks, the stream keeps the events unread by the consumer
  group, and the ids of jobs in flight are kept in Redis, so start-up recovery leaves them alone;
- a cancel: images not started are canceled at once; running ones stop at their node's next step, when
  it sees the job's cancel flag. An image stored after its cancel was reported is removed.

A batch with LoRAs goes to an idle node that holds them, through that node's own queue; what such a node
does not take at once is moved to the shared queue (backend.gpu.celery_routing).
"""

import logging
import threading
import time
import uuid
from concurrent.futures import Future

import redis

from backend.gpu import celery_app as ca
from backend.gpu import celery_rescue as rescue
from backend.gpu import celery_routing as cr
from backend.gpu import executor as ev
from backend.gpu import messages as m
from backend.gpu.batches import HeldJob, batch_size, build_task
from backend.gpu.celery_flights import Flights
from backend.models import JobManifest, Status

log = logging.getLogger("showroom.celery")
READ_BLOCK_MS = 1000   # the event thread waits this long for new events before its housekeeping
WORKERS_EVERY_S = 2.0  # how often the node workers' heartbeats are read
RECONCILE_EVERY_S = 30.0
SWEEP_EVERY_S = 1.0    # how often the nodes' own queues are looked at for batches to move to the shared queue
PUBLISH_RETRY = {"max_retries": 3, "interval_start": 0.5, "interval_step": 1, "interval_max": 3}  # ~8 s, then fail


class CeleryExecutor:
    def __init__(self, settings, storage, on_event: ev.EventSink | None = None):
        self.settings, self.storage = settings, storage
        self.on_event = on_event or (lambda event: None)
        self.app = ca.configure(settings)
        self.redis = ca.redis_client(settings)
        self.queue = ca.image_queue(settings.model_id)
        self.native_size: int | None = None
        self.lock = threading.Lock()  # the upscales, the fleet's view, the trainings' deadlines; flights have their own
        self.flights = Flights(self.redis, storage, self.on_event)
        self.upscales: dict[str, Future] = {}
        self.training_deadlines: dict[str, float] = {}  # training id -> when TRAINING_TIMEOUT_S stops it
        self.workers: list[dict] = []
        self.errors: list[str] = []
        self._refused: set[str] = set()  # node workers already logged as running another model
        self.router = cr.Router(self.redis, settings.model_id, self.queue)
        self.rescue = rescue.Rescue(self.app, self.redis, settings, self.queue, PUBLISH_RETRY)
        self._reconcile_at = 0.0  # when _reconcile runs next (at once after an undecided image)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="celery-events", daemon=True)

    # ----- the executor interface -----
    def start(self) -> None:
        for attempt in range(5):  # the broker may still be starting beside us
            try:
                self.redis.set(ca.MODEL, self.settings.model_id)
                self._ensure_group()
                self.flights.adopt()
                break
            except redis.RedisError as e:
                log.warning("the broker does not answer yet (%s); trying again", e)
                time.sleep(1 + attempt)
        else:
            log.error("the broker at BROKER_URL does not answer: jobs in flight before this start may be sent twice")
        self._refresh_workers()
        self._thread.start()

    def stop(self, timeout: float = 10) -> None:
        """Stops listening; the work in the broker and on the nodes goes on and is read by the next start."""
        self._stopping.set()
        self._thread.join(timeout)
        with self.lock:
            futures, self.upscales = list(self.upscales.values()), {}
        for future in futures:
            future.set_exception(RuntimeError("the backend is stopping"))

    def submit(self, job: JobManifest, loras: tuple) -> None:
        queued = [img.index for img in job.images if img.status == Status.queued]
        if not queued:
            return
        held = HeldJob(job.model_copy(deep=True), loras, set(queued))
        self.flights.add(held)
        with self.lock:
            share = self._workers_up()
        batches, rest = [], list(queued)
        while rest:
            size = batch_size(len(rest), share, self.settings.max_batch)
            batches.append(rest[:size])
            rest, share = rest[size:], max(1, share - 1)
        sent = 0
        try:
            self.redis.sadd(ca.HELD, job.id)
            for batch, (task_id, node) in zip(batches, self.router.routes(held, batches)):
                self._send(held, batch, task_id, node)
                sent += 1
        except Exception as e:  # the broker is unreachable: what was not sent fails with the reason
            reason = f"the broker (BROKER_URL) could not be reached to send this image to a GPU node: {e}"[:500]
            log.error("job %s: %s", job.id, reason)
            self.flights.fail(job.id, [index for batch in batches[sent:] for index in batch], reason)
        log.info("job %s images %s -> broker as %d batch(es)", job.id, queued, len(batches))

    def cancel(self, job_id: str) -> bool:
        waiting = self.flights.cancel(job_id)
        if waiting is None:
            return False
        try:
            self.redis.set(ca.cancel_key(job_id), "1", ex=ca.CANCEL_TTL_S)
        except redis.RedisError as e:
            log.error("job %s: the cancel flag could not be set (%s); running images finish", job_id, e)
        self.flights.canceled(job_id, waiting)
        return True

    def holds(self, job_id: str) -> bool:
        return job_id in self.flights

    def stop_training(self, training_id: str, reason: str) -> None:
        """Its chunks, running on a node or waiting in the broker, stop at the flag; the training ends here at
        once, since a chunk still waiting may not be taken for a while."""
        with self.lock:
            self.training_deadlines.pop(training_id, None)
        try:
            self.redis.set(ca.stop_training_key(training_id), reason, ex=ca.CANCEL_TTL_S)
        except redis.RedisError as e:
            log.error("training %s: the stop flag could not be set (%s); its chunks run on", training_id, e)
        self.on_event(ev.TrainingFailed(training_id, reason))

    def upscale(self, source_key: str, target_key: str) -> Future:
        """On a node's GPU with the local upscaler; the future ends when the node reports it stored."""
        request_id, future = uuid.uuid4().hex, Future()
        with self.lock:
            if self._stopping.is_set():
                raise RuntimeError("the backend is stopping")
            self.upscales[request_id] = future
        limit = self.settings.image_timeout_s
        self.app.send_task(ca.UPSCALE, kwargs={"request_id": request_id, "source_key": source_key,
                                                "target_key": target_key}, queue=self.queue, soft_time_limit=limit,
                           time_limit=limit + ca.HARD_LIMIT_MARGIN_S, retry=True, retry_policy=PUBLISH_RETRY)
        return future  # running once a node says it took it up (UpscaleStarted); queued in the broker till then

    def train(self, task: m.TrainTask) -> None:
        """On a node's GPU, as a chain of chunks (celery_app.chunk_steps): each resumes from the checkpoint the
        one before stored and sends the next, so no task outlives the broker's visibility timeout and a node
        lost mid-way costs one chunk. Sent again after a backend restart, it joins the chain still running."""
        target = min(task.steps, ca.chunk_steps(task))
        try:
            key = ca.chunk_key(task.training_id, target)
            # A backend that stopped between its claim and the send sends it now (a copy costs one chunk at most).
            if ca.claim_chunk(self.redis, key, "backend") or self.redis.get(key) == "backend":
                self.app.send_task(ca.TRAIN, kwargs={"task": ca.train_payload(task), "model_id": self.settings.model_id,
                                                     "target": target}, queue=self.queue,
                                   soft_time_limit=ca.longest_task_s(self.settings),
                                   time_limit=ca.longest_task_s(self.settings) + ca.HARD_LIMIT_MARGIN_S, retry=True,
                                   retry_policy=PUBLISH_RETRY)
                ca.chunk_sent(self.redis, key, "backend")
            else:
                log.info("training %s: its first chunk was sent before; the chain goes on", task.training_id)
        except Exception as e:  # the broker is unreachable: the training fails with the reason, nothing waits
            self.on_event(ev.TrainingFailed(task.training_id, f"the broker (BROKER_URL) could not be reached to send "
                                            f"this training to a GPU node: {e}"[:500]))
            return
        with self.lock:  # as locally, the limit runs from this start (a training taken back starts anew)
            self.training_deadlines[task.training_id] = time.monotonic() + self.settings.training_timeout_s

    def pending_images(self) -> int:
        return self.flights.pending_images()

    def pending_cost(self) -> float:
        return self.flights.pending_cost()

    def hopeless(self) -> bool:
        """Never: nodes come and go, and work waits in the broker for the next one."""
        return False

    def last_error(self) -> str:
        with self.lock:
            return self.errors[0] if self.errors else "no GPU node has reported"

    def snapshot(self) -> dict:
        pending = self.flights.pending_images()
        with self.lock:
            return {"workers": [dict(w) for w in self.workers], "errors": list(self.errors), "pending": pending,
                    "native_size": self.native_size}

    # ----- sending -----
    def _send(self, held: HeldJob, indices: list[int], task_id: str, node: str | None = None) -> None:
        task = build_task(0, held, indices, self.settings.model_id)
        limit = self.settings.image_timeout_s * len(indices)
        queue = ca.node_queue(node) if node else self.queue
        self.app.send_task(ca.GENERATE, kwargs={"task": ca.task_payload(task), "model_id": self.settings.model_id},
                           queue=queue, task_id=task_id, soft_time_limit=limit,
                           time_limit=limit + ca.HARD_LIMIT_MARGIN_S, retry=True, retry_policy=PUBLISH_RETRY)
        if node:
            log.info("job %s images %s -> node %s (idle, and it holds the job's LoRAs)", held.job.id, indices, node)

    def _workers_up(self) -> int:
        """Under the lock: how many node workers a job is shared among: every live one, busy or not. The
        batches are cut once, as the job is sent, so they follow the size of the fleet rather than who
        happened to be idle at that instant (a 2 s old view); a busy worker takes its batch when it is free."""
        return max(1, sum(w["state"] in ("ready", "busy") for w in self.workers))

    # ----- the event thread -----
    def _loop(self) -> None:
        last_workers = last_sweep = 0.0
        backlog, failures = True, 0
        while not self._stopping.is_set():
            try:
                if time.monotonic() - last_workers > WORKERS_EVERY_S:
                    self._refresh_workers()
                    last_workers = time.monotonic()
                if time.monotonic() - last_sweep > SWEEP_EVERY_S:
                    self.router.sweep()
                    last_sweep = time.monotonic()
                if time.monotonic() >= self._reconcile_at:
                    self._reconcile_at = time.monotonic() + RECONCILE_EVERY_S
                    self._reconcile()
                backlog = self._read(backlog)
                failures = 0
            except redis.ResponseError as e:
                if "NOGROUP" in str(e):  # the broker lost its data (restarted without persistence)
                    self._ensure_group()
                    continue
                log.exception("reading the events stream failed")
                time.sleep(1)
            except (redis.ConnectionError, redis.TimeoutError) as e:
                failures += 1
                if failures == 1 or failures % 30 == 0:
                    log.warning("the broker is unreachable (%s); reading again", e)
                time.sleep(1)
            except Exception:
                log.exception("the event thread hit an error; carrying on")
                time.sleep(1)

    def _read(self, backlog: bool) -> bool:
        """Read and apply one batch of events. First this consumer's unacknowledged ones (left by a
        backend stopped mid-way), then new ones. Returns whether a backlog remains."""
        start = "0" if backlog else ">"
        reply = self.redis.xreadgroup(ca.GROUP, "backend", {ca.EVENTS: start}, count=200,
                                      block=None if backlog else READ_BLOCK_MS)
        entries = reply[0][1] if reply else []
        for entry_id, fields in entries:
            try:
                event = ca.decode_event(fields)
            except (ValueError, TypeError, KeyError) as e:
                log.warning("event %s ignored: %s", entry_id, e)
            else:
                self._apply(event)
        if entries:
            self.redis.xack(ca.EVENTS, ca.GROUP, *[entry_id for entry_id, _ in entries])
        return backlog and bool(entries)

    def _apply(self, event) -> None:
        if isinstance(event, ca.UpscaleStarted):
            with self.lock:
                future = self.upscales.get(event.request_id)
            if future is not None and not (future.running() or future.done()):  # a redelivered task says so twice
                future.set_running_or_notify_cancel()
            return
        if isinstance(event, ca.UpscaleDone):
            with self.lock:
                future = self.upscales.pop(event.request_id, None)
            if future is None:  # an earlier run's, or one given up at shutdown
                return
            if event.error is None:  # resolved outside the lock: its callbacks write the manifest
                future.set_result(None)
            else:
                future.set_exception(RuntimeError(event.error))
            return
        if isinstance(event, ca.ImageUndecided):  # not the sink's: _reconcile decides once storage answers
            if self.flights.undecided(event.job_id, event.index, event.error):
                self._reconcile_at = 0.0
            return
        if isinstance(event, ev.ImagesStarted):
            self.router.started(event.job_id, event.indices)
        if isinstance(event, (ev.TrainingSucceeded, ev.TrainingFailed)):
            with self.lock:
                self.training_deadlines.pop(event.training_id, None)
        self.flights.apply(event)

    def _reconcile(self) -> None:
        """Every half minute, what the stream may not have said: the nodes' own queues of nodes gone quiet,
        and the images of jobs in flight checked against storage; and trainings past TRAINING_TIMEOUT_S."""
        self.router.scan()
        self.flights.reconcile()
        self._time_out_trainings()

    def _time_out_trainings(self) -> None:
        """A chunk is bounded by its task's time limit; the whole training by TRAINING_TIMEOUT_S, as locally."""
        limit = self.settings.training_timeout_s
        with self.lock:
            late = [t for t, deadline in self.training_deadlines.items() if time.monotonic() > deadline]
        for training_id in late:
            log.error("training %s: past TRAINING_TIMEOUT_S; stopping it", training_id)
            self.stop_training(training_id, ev.training_timed_out(limit))

    def _ensure_group(self) -> None:
        try:
            self.redis.xgroup_create(ca.EVENTS, ca.GROUP, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    def _refresh_workers(self) -> None:
        """The node workers that reported in the last minute, from their heartbeats."""
        beats = self.redis.hgetall(ca.WORKERS)
        fleet = ca.read_fleet(beats, self.settings.model_id, time.time())
        self.router.heard_from(w["id"].rpartition("/")[0] for w in fleet.workers)
        self.rescue.check(beats, self.flights.open_of, self._apply)
        expired = [w for w in fleet.expired if self.rescue.settled(beats[w])]  # a task it names is seen to first
        if expired:
            self.redis.hdel(ca.WORKERS, *expired)
        for worker_id, reason in fleet.refused.items():
            if worker_id not in self._refused:
                self._refused.add(worker_id)
                log.warning("%s", reason)
        with self.lock:
            self.workers, self.errors = fleet.workers, fleet.errors
            self.native_size = fleet.native_size or self.native_size
