"""The one Celery app (EXECUTOR=celery), its configuration, the Redis client beside it, and the names the
backend and the GPU nodes share.

Work goes out as Celery tasks on the Redis broker at BROKER_URL: one task per batch of a job's images,
carrying the fields of `messages.Task` (ids, storage keys, the spec's numbers; never image bytes). What
the nodes report comes back on a Redis stream as the executor's own events, which the backend reads
with a consumer group: an event written while the backend is down waits for it. Heartbeats, cancel
flags and the set of jobs in flight are plain Redis keys next to the queues.

Two connections to one Redis, each made here and nowhere else: Celery's own (the queues) and one
redis-py client (stream, heartbeats, flags), both with the timeouts stated below.
"""

import dataclasses
import hashlib
import json
import re
import ssl

import redis
from celery import Celery
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from backend.gpu import executor as ev
from backend.gpu import messages as m

GENERATE = "showroom.generate"   # kwargs: task (the fields of messages.Task), model_id
UPSCALE = "showroom.upscale"     # kwargs: request_id, source_key, target_key
TRAIN = "showroom.train"         # kwargs: task (the fields of messages.TrainTask), model_id, target (its last step)
EVENTS = "showroom:events"       # stream, node -> backend: {"type": event class, "data": its fields as JSON}
GROUP = "backend"                # the backend's consumer group on EVENTS
WORKERS = "showroom:workers"     # hash: "<node>/<n>" -> the worker's last heartbeat (JSON)
HELD = "showroom:held"           # set: ids of jobs sent to the broker and not yet finished
MODEL = "showroom:model"         # the backend's MODEL_ID, for nodes to compare with their own
EVENTS_MAXLEN = 50_000           # the stream is trimmed (approximately) past this many entries
HEARTBEAT_S = 5                  # a worker writes its heartbeat this often
STALE_S = 3 * HEARTBEAT_S        # a worker silent this long is shown dead
LIVE_S = 60                      # ... and one silent this long is no longer listed (the contract's minute)
CANCEL_TTL_S = 24 * 3600         # a cancel flag outlives any task still waiting in the broker for its job
HARD_LIMIT_MARGIN_S = 30         # the hard time limit follows the soft one (IMAGE_TIMEOUT_S x batch) by this
VISIBILITY_MARGIN_S = 600        # the broker redelivers an unacknowledged task this long after the longest one
MODEL_LOAD_S = 1800              # how long a node's GPU process may take to download and load the model
TRAIN_CHUNK_MIN = 50             # a training runs as tasks of at least this many steps, each resumed from a checkpoint

app = Celery("showroom", set_as_current=False)
_configured = False


def image_queue(model_id: str) -> str:
    """Each model has its own queue: a node takes only work made for the model it has loaded."""
    return f"showroom.images.{hashlib.sha1(model_id.encode()).hexdigest()[:12]}"


def node_queue(node: str) -> str:
    """A node's own queue, which it consumes beside its model's: batches whose LoRAs it holds (celery_routing)."""
    return f"showroom.node.{node}"


def chunk_key(training_id: str, target: int) -> str:
    """Claimed by whoever sends a training's chunk ending at `target` (its task id, then `sent:<id>` once
    sent): a chunk is sent once, however many copies of the one before it ran (`claim_chunk`)."""
    return f"showroom:training:{training_id}:{target}"


_TAKE_OVER = ("if redis.call('get', KEYS[1]) == ARGV[1] then redis.call('set', KEYS[1], ARGV[2], 'KEEPTTL') "
              "return 1 end return 0")


def claim_chunk(client, key: str, claimer: str, superseded=None) -> bool:
    """Whether `claimer` (a task id) is to send the training chunk behind `key`: it claims it first, or the
    task that claimed it was lost and sent again (`superseded(holder)` names that key in Redis) before it
    said it had sent it. A compare-and-set, so of two copies one takes it over."""
    if client.set(key, claimer, nx=True, ex=CANCEL_TTL_S):
        return True
    holder = client.get(key) or ""
    if holder.startswith("sent:") or superseded is None or not client.exists(superseded(holder)):
        return False
    return bool(client.eval(_TAKE_OVER, 1, key, holder, claimer))


def chunk_sent(client, key: str, claimer: str) -> None:
    """The chunk is in the broker: no copy of its claimer sends it again."""
    client.set(key, f"sent:{claimer}", xx=True, keepttl=True)


def longest_task_s(settings) -> float:
    """The soft time limit of the longest task: a batch of MAX_BATCH images, and so one training chunk."""
    return settings.image_timeout_s * settings.max_batch


def cancel_key(job_id: str) -> str:
    return f"showroom:cancel:{job_id}"


def stop_training_key(training_id: str) -> str:
    """Set (to the reason) when a training must stop: its chunks running or waiting in the broker end there."""
    return f"showroom:stop-training:{training_id}"


def name_key(node: str) -> str:
    return f"showroom:node:{node}"


def claim_name(client, wanted: str, instance: str) -> str:
    """`wanted`, or `wanted-2`, ... if a live node holds it: two nodes never share a name."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", wanted).strip("-") or "node"
    for n in range(1, 100):
        name = base if n == 1 else f"{base}-{n}"
        if client.set(name_key(name), instance, nx=True, ex=STALE_S) or client.get(name_key(name)) == instance:
            return name
    raise RuntimeError(f"no free node name like {base!r}")


# Renew a node's name only while it is this node's, or nobody's: ARGV[1] the node's instance, ARGV[2] STALE_S.
_RENEW_NAME = """
if redis.call('get', KEYS[1]) == ARGV[1] or redis.call('exists', KEYS[1]) == 0 then
  redis.call('set', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return 1
end
return 0
"""


def renew_name(client, name: str, instance: str) -> bool:
    """Keep `name` for STALE_S more; False when another node holds it (it was claimed while this node was
    cut off from the broker for longer than STALE_S): two nodes then beat under one name."""
    return bool(client.eval(_RENEW_NAME, 1, name_key(name), instance, STALE_S))


def celery_config(settings) -> dict:
    """Long GPU tasks, acknowledged only once done: a task whose worker dies is run again, never dropped."""
    longest = longest_task_s(settings) + HARD_LIMIT_MARGIN_S
    url = settings.broker_url.get_secret_value()
    # rediss:// without ssl_cert_reqs would make Celery encrypt but accept any certificate (redis-py's own
    # client checks it): a broker across the internet must be the one it claims to be.
    tls = {"broker_use_ssl": {"ssl_cert_reqs": ssl.CERT_REQUIRED}} if (
        url.startswith("rediss://") and "ssl_cert_reqs" not in url) else {}
    return tls | {
        "broker_url": settings.broker_url.get_secret_value(),
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,  # a node waits out a broker restart, however long
        "broker_transport_options": {
            # Longer than the longest task, or a task still running would be handed to a second node.
            "visibility_timeout": longest + VISIBILITY_MARGIN_S,
            "socket_timeout": 30, "socket_connect_timeout": 10, "socket_keepalive": True,
            "health_check_interval": 30,
            "unacked_restore_interval": 10, "unacked_restore_throttle": 6,  # look for lost tasks each minute
        },
        "task_serializer": "json", "accept_content": ["json"], "result_serializer": "json",
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_retry_on_worker_lost": True,  # ... as a retry, so a task that kills its worker runs twice at most
        "task_acks_on_failure_or_timeout": True,
        "task_track_started": False,
        "worker_prefetch_multiplier": 1,    # an idle GPU takes the next batch; a busy one holds none back
        "worker_proc_alive_timeout": MODEL_LOAD_S,
        "worker_send_task_events": False,   # Flower: `celery -A backend.gpu.celery_app control enable_events`
        "worker_hijack_root_logger": True,
        "worker_redirect_stdouts": False,
    }


def configure(settings) -> Celery:
    """The app, configured from these settings (the backend and the node call this once). Called again with
    another broker (tests run executors on several Redis servers in one process), it lets go of the
    connections it pooled to the first: kept, they would carry the tasks there."""
    global _configured
    config = celery_config(settings)
    if _configured and app.conf.broker_url != config["broker_url"]:
        app._after_fork()  # Celery's own reset of its connection and producer pools
    _configured = True
    app.conf.update(config)
    return app


@app.on_configure.connect
def _from_environment(sender: Celery, **kwargs) -> None:
    # `celery -A backend.gpu.celery_app flower|inspect|...` use the app without `configure`: read the settings.
    if not _configured:
        from backend.config import get_settings

        sender.conf.update(celery_config(get_settings()))


def redis_client(settings) -> redis.Redis:
    """The one redis-py client of a process. Commands time out after 10 s; a dropped connection is
    retried three times with a short backoff (a Redis restart), then the caller sees the error."""
    return redis.Redis.from_url(
        settings.broker_url.get_secret_value(), decode_responses=True, socket_timeout=10,
        socket_connect_timeout=5, socket_keepalive=True, health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=2, base=0.2), 3),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError])


# ----- the task's payload: the fields of messages.Task, JSON-safe -----
def task_payload(task: m.Task) -> dict:
    fields = dataclasses.asdict(task)
    del fields["task_id"]  # the worker's own counter, not the broker's id
    return fields


def train_payload(task: m.TrainTask) -> dict:
    fields = dataclasses.asdict(task)
    del fields["task_id"]
    return fields


def train_from_payload(fields: dict, task_id: int) -> m.TrainTask:
    return m.TrainTask(task_id=task_id, **{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})


def chunk_steps(task: m.TrainTask) -> int:
    """Steps per training task: each fits well inside a task's time limit (and so the broker's visibility
    timeout), so a node lost mid-way costs one chunk, and a node reloads the trainer once per chunk."""
    return max(TRAIN_CHUNK_MIN, task.checkpoint_every)


def task_from_payload(fields: dict, task_id: int) -> m.Task:
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    values["loras"] = tuple(m.LoraTask(**lora) for lora in fields.get("loras", ()))
    return m.Task(task_id=task_id, **values)


# ----- events on the stream -----
@dataclasses.dataclass(frozen=True)
class UpscaleStarted:
    """Node -> backend: a GPU took up a local upscale (UPSCALE task); until then it waits in the broker."""
    request_id: str


@dataclasses.dataclass(frozen=True)
class UpscaleDone:
    """Node -> backend: a local upscale (UPSCALE task) is stored, or failed with `error`."""
    request_id: str
    error: str | None = None


@dataclasses.dataclass(frozen=True)
class ImageUndecided:
    """Node -> backend: an image's task ended badly and storage could not say whether its object landed.
    The backend decides once storage answers: stored → succeeded, else failed with `error`."""
    job_id: str
    index: int
    error: str


EVENT_TYPES = {cls.__name__: cls for cls in (
    ev.ImagesStarted, ev.ImagesProgress, ev.ImagePreview, ev.ImageSucceeded, ev.ImageFailed, ev.ImagesRequeued,
    ev.ImagesCanceled, ev.BatchFinished, ev.WorkerReady, UpscaleStarted, UpscaleDone, ImageUndecided,
    ev.TrainingStarted, ev.TrainingProgress, ev.TrainingRequeued, ev.TrainingSucceeded, ev.TrainingFailed)}


def encode_event(event) -> dict[str, str]:
    return {"type": type(event).__name__, "data": json.dumps(dataclasses.asdict(event))}


def decode_event(fields: dict[str, str]):
    """The event an entry holds; ValueError for one this version does not know."""
    cls = EVENT_TYPES.get(fields.get("type", ""))
    if cls is None:
        raise ValueError(f"unknown event type {fields.get('type')!r}")
    data = json.loads(fields["data"])
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def publish(client: redis.Redis, event) -> None:
    client.xadd(EVENTS, encode_event(event), maxlen=EVENTS_MAXLEN, approximate=True)


# ----- heartbeats: WORKERS maps "<node>/<n>" to {"device", "state", "model", "pid", "native_size", "error",
# "loras" (the catalog names of the LoRAs it has loaded), "ts"} -----
@dataclasses.dataclass
class Fleet:
    """The node workers that reported in the last minute, as /health lists them."""
    workers: list[dict]
    errors: list[str]
    native_size: int | None
    refused: dict[str, str]  # worker id -> why it is given no work (it runs another model)
    expired: list[str]       # ids silent for ten minutes: their heartbeats can be removed


def read_fleet(beats: dict[str, str], model_id: str, now: float) -> Fleet:
    fleet = Fleet([], [], None, {}, [])
    for worker_id, raw in sorted(beats.items()):
        try:
            beat = json.loads(raw)
            age = now - float(beat["ts"])
        except (ValueError, KeyError, TypeError):
            continue
        if age > LIVE_S:
            if age > 10 * LIVE_S:
                fleet.expired.append(worker_id)
            continue
        state = beat.get("state", "dead") if age <= STALE_S else "dead"
        if beat.get("model") != model_id:
            state = "dead"
            fleet.refused[worker_id] = (f"{worker_id} runs MODEL_ID={beat.get('model')!r} but this backend runs "
                                        f"{model_id!r}: it is given no work; start it with the same MODEL_ID")
            fleet.errors.append(fleet.refused[worker_id])
        elif beat.get("error"):
            fleet.errors.append(f"{worker_id}: {beat['error']}")
        elif age > STALE_S:
            fleet.errors.append(f"{worker_id} has not reported for {age:.0f} s")
        else:
            fleet.native_size = fleet.native_size or beat.get("native_size")
        fleet.workers.append({"id": worker_id, "device": beat.get("device") or "unknown", "state": state})
    if not fleet.workers:
        fleet.errors.append("no GPU node has reported in the last minute: start one with `python -m backend.node` "
                            "and the same BROKER_URL and MODEL_ID")
    return fleet
