"""LoRA affinity for EXECUTOR=celery: a batch goes to the node that already holds its LoRAs, when that node
says it is idle right now, through the node's own Celery queue (`showroom.node.<name>`, which every node
consumes beside the model's shared queue). Loading a LoRA costs a download and a pipeline change; a node
that made the product's last pictures has it in memory.

Nothing may wait on a node's own queue: a busy node would hold the batch back while others are idle, and
a dead one would hold it for ever. So:
- only a node whose heartbeat says `ready` (written as its state changes, and at most FRESH_S old) is
  chosen, and no node is given more such batches at once than it has idle GPUs holding the LoRAs (a
  batch counts against its node until the node reports it started: by then its heartbeat says busy);
- whatever lies in a node's own queue longer than AFFINITY_WAIT_S (the node did not take it: it became
  busy, or died) is moved to the shared queue, in one Redis script: taken by the node or moved, never both;
- a batch a node took and then lost goes back, by Celery's own redelivery, to the queue it came from:
  the node's own (the same rule moves it on), whether it comes back as a retry after a GPU process
  died or after the broker's visibility timeout when the whole node vanished.
"""

import base64
import json
import logging
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass

import redis

from backend.gpu import celery_app as ca

log = logging.getLogger("showroom.celery")
AFFINITY_WAIT_S = 3.0        # an idle node takes a batch from its own queue within milliseconds
FRESH_S = 2 * ca.HEARTBEAT_S  # a heartbeat older than this does not make a node a candidate

# KEYS: the node's queue, the shared queue; ARGV: the message as it lies there, the message as it is moved
MOVE = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
  redis.call('RPUSH', KEYS[2], ARGV[2])
  return 1
end
return 0
"""


@dataclass(frozen=True)
class Routed:
    node: str
    job_id: str
    indices: tuple[int, ...]
    sent_at: float  # time.monotonic()


def idle_holders(beats: dict[str, str], model_id: str, loras: list[str], now: float) -> dict[str, tuple]:
    """node -> (score, idle GPUs holding the job's LoRAs) for the nodes worth sending this batch to. The
    score puts a node holding the first LoRA (the product's) first, then the one holding most of them."""
    wanted = set(loras)
    found: dict[str, tuple] = {}
    for worker_id, raw in beats.items():
        try:
            beat = json.loads(raw)
            fresh = now - float(beat["ts"]) <= FRESH_S
        except (ValueError, KeyError, TypeError):
            continue
        held = set(beat.get("loras") or ())
        if not (fresh and beat.get("state") == "ready" and beat.get("model") == model_id and held & wanted):
            continue
        node = worker_id.rpartition("/")[0]
        score = (loras[0] in held, len(held & wanted))
        best, count = found.get(node, (score, 0))
        found[node] = (max(best, score), count + 1)
    return found


def pick_node(beats: dict[str, str], model_id: str, loras: list[str], waiting: Counter, now: float) -> str | None:
    """The node whose own queue this batch goes to, or None for the shared queue. `waiting` counts the
    batches sent to each node's own queue in the last AFFINITY_WAIT_S (not yet known to be taken)."""
    if not loras:
        return None
    candidates = [(score, count - waiting[node], node)
                  for node, (score, count) in idle_holders(beats, model_id, loras, now).items()
                  if count > waiting[node]]
    if not candidates:
        return None
    return max(sorted(candidates, key=lambda c: c[2]), key=lambda c: (c[0], c[1]))[2]  # ties: the first name


def task_of(raw: str) -> tuple[str | None, dict]:
    """The Celery task id and kwargs of a message as kombu's Redis transport stores it (for logs)."""
    try:
        message = json.loads(raw)
        _, kwargs, _ = json.loads(base64.b64decode(message["body"]))
        return message["headers"].get("id"), kwargs
    except (ValueError, KeyError, TypeError):
        return None, {}


def readdressed(raw: str, queue: str) -> str:
    """The message addressed to `queue`: a redelivery (retry, visibility timeout) then goes there too."""
    message = json.loads(raw)
    message["properties"]["delivery_info"]["routing_key"] = queue
    return json.dumps(message)


class Router:
    """The executor's side: which batch goes to which queue, and the sweep of the nodes' own queues. Called
    from the request threads (routes) and the executor's event thread (sweep, scan, heard_from)."""

    def __init__(self, client, model_id: str, shared_queue: str):
        self.redis, self.model_id, self.shared_queue = client, model_id, shared_queue
        self.lock = threading.Lock()
        self.routed: dict[str, Routed] = {}  # Celery task id -> the node whose own queue it was sent to
        self.node_queues: set[str] = set()   # the own queues of the nodes heard from in the last minute
        self.stray_queues: set[str] = set()  # ... and of any node, holding work at the last scan
        self._move = client.register_script(MOVE)

    def routes(self, held, batches: list[list[int]]) -> list[tuple[str, str | None]]:
        """(Celery task id, node) for each of a job's batches: the node whose own queue it goes to, idle and
        holding the job's LoRAs, or None for the shared queue. The first (largest) ones are routed."""
        names = [lora.name for lora in held.loras]
        beats = {}
        if names:
            try:
                beats = self.redis.hgetall(ca.WORKERS)
            except redis.RedisError as e:  # the shared queue serves: the send says if the broker is away
                log.warning("job %s: heartbeats unreadable (%s); its batches go to the shared queue", held.job.id, e)
        routes, now, sent_at = [], time.time(), time.monotonic()
        with self.lock:  # one submit at a time sees and takes an idle node's room
            waiting = Counter(r.node for r in self.routed.values() if sent_at - r.sent_at < AFFINITY_WAIT_S)
            for batch in batches:
                task_id = str(uuid.uuid4())
                node = pick_node(beats, self.model_id, names, waiting, now) if beats else None
                if node:
                    waiting[node] += 1
                    self.routed[task_id] = Routed(node, held.job.id, tuple(batch), sent_at)
                routes.append((task_id, node))
        return routes

    def started(self, job_id: str, indices) -> None:
        """A node reported these images started: a batch routed with them no longer waits on its node."""
        with self.lock:
            self.routed = {k: r for k, r in self.routed.items()
                           if r.job_id != job_id or not set(r.indices) & set(indices)}

    def sweep(self) -> None:
        """A batch that lies in a node's own queue and was not sent there in the last AFFINITY_WAIT_S goes to
        the shared queue: its node did not take it (busy, or gone), or it came back there by redelivery."""
        now = time.monotonic()
        with self.lock:
            self.routed = {k: r for k, r in self.routed.items() if now - r.sent_at < AFFINITY_WAIT_S}
            recent = set(self.routed)
            queues = self.node_queues | self.stray_queues | {ca.node_queue(r.node) for r in self.routed.values()}
        queues = sorted(queues)
        if not queues:
            return
        with self.redis.pipeline(transaction=False) as pipe:
            for queue in queues:
                pipe.lrange(queue, 0, -1)
            contents = pipe.execute()
        for queue, raws in zip(queues, contents):
            for raw in raws:
                task_id, kwargs = task_of(raw)
                if task_id in recent:
                    continue
                # a batch for another model (an earlier backend's) goes to that model's queue, not to ours
                target = ca.image_queue(kwargs["model_id"]) if kwargs.get("model_id") else self.shared_queue
                if self._move(keys=[queue, target], args=[raw, readdressed(raw, target)]):
                    task = kwargs.get("task") or {}
                    log.info("job %s images %s: not taken from %s; moved to the shared queue", task.get("job_id"),
                             task.get("indices"), queue)

    def scan(self) -> None:
        """Find the own queues holding work of nodes not heard from in the last minute too (a batch
        redelivered there after its node vanished: the broker's visibility timeout is long)."""
        try:
            found = set(self.redis.scan_iter(match=ca.node_queue("*"), count=1000, _type="list"))
        except redis.RedisError as e:
            log.warning("the nodes' own queues could not be listed: %s", e)
            return
        with self.lock:
            self.stray_queues = found

    def heard_from(self, nodes) -> None:
        queues = {ca.node_queue(node) for node in nodes}
        with self.lock:
            self.node_queues = queues
