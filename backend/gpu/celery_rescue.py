"""A node that vanishes whole (switched off, its network gone) while it runs a task: the task is sent again
within LOST_S, instead of after the broker's visibility timeout (about 90 minutes with the defaults).

While a GPU process runs a task, its heartbeat names it (id, name, queue) and the task's kwargs wait under
`showroom:running:<id>`. When that heartbeat has not changed for LOST_S, timed by the backend's own clock
(a node's clock may be off), and no other heartbeat names the same task, the backend sends a copy under a
new id to the model's shared queue, then marks the old id superseded (a Redis key that outlives the
visibility timeout). Why no other heartbeat: a GPU process killed alone is replaced by its node, which
Celery hands the same task at once; its successor beats under the same worker id and runs it.

A node that receives a superseded task (the broker redelivers the lost one after the visibility timeout)
acknowledges it and does nothing. A node that was only cut off for a while and comes back finishes its
copy: both copies make the same pixels from the same seeds, and a node skips an image already stored.
A task lost MAX_RESCUES times (a batch that takes its box down with it, spot boxes that keep vanishing)
is not sent again: its images fail with the reason.

The order (send, then mark) means a backend that dies in between sends a second copy after its restart,
or leaves the old task to run after the visibility timeout: work may be done twice, never lost.
Not covered: a task a node took from the broker but had not started (waiting for a GPU process still
loading) is named by no heartbeat and comes back after the visibility timeout.
"""

import json
import logging
import time
import uuid

from backend.gpu import celery_app as ca
from backend.gpu import executor as ev

log = logging.getLogger("showroom.celery")

LOST_S = 30  # NODE_LOST_S's default: six missed heartbeats, the node is gone or cut off long enough that a copy is
#              worth its cost
SUPERSEDED_TTL_S = ca.CANCEL_TTL_S  # longer than any visibility timeout: a redelivered old task still finds it
MAX_RESCUES = 2  # then the task's images (its training, its upscale) fail
RESCUED = (ca.GENERATE, ca.TRAIN, ca.UPSCALE)  # the tasks a heartbeat may name


def superseded_key(task_id: str) -> str:
    return f"showroom:superseded:{task_id}"


def kwargs_key(task_id: str) -> str:
    """The kwargs of a task being run (up to ~20 KB with its prompts): kept out of the heartbeat, read once."""
    return f"showroom:running:{task_id}"


def running(request) -> dict:
    """What a heartbeat says of the task a GPU process runs."""
    return {"id": request.id, "name": request.task, "queue": (request.delivery_info or {}).get("routing_key")}


def only_indices(payload: dict, keep: set[int]) -> dict:
    """A GENERATE payload (the fields of messages.Task) cut to the images in `keep`, in their order."""
    picks = [n for n, index in enumerate(payload["indices"]) if index in keep]
    cut = dict(payload)
    for name in ("indices", "seeds", "keys", "preview_keys"):
        if payload.get(name):
            cut[name] = [payload[name][n] for n in picks]
    return cut


class Silence:
    """How long each worker's heartbeat has not changed, by this process's monotonic clock."""

    def __init__(self, lost_s: float = LOST_S):
        self.lost_s = lost_s
        self.seen: dict[str, tuple[str, float]] = {}  # worker id -> (its last heartbeat, when it changed)

    def lost(self, beats: dict[str, str], model_id: str, now: float) -> list[tuple[str, dict]]:
        """(worker id, task) for each task whose worker has not beaten for `lost_s`, unless a worker that
        beat since runs the same task. `beats` is the WORKERS hash as Redis holds it."""
        self.seen = {w: (raw, self.seen[w][1] if w in self.seen and self.seen[w][0] == raw else now)
                     for w, raw in beats.items()}
        silent, live = [], set()
        for worker_id, (raw, changed) in sorted(self.seen.items()):
            try:
                beat = json.loads(raw)
            except ValueError:
                continue
            task = beat.get("task") if isinstance(beat, dict) else None
            if not isinstance(task, dict) or task.get("name") not in RESCUED or beat.get("model") != model_id:
                continue  # idle, unreadable, or of another model: a copy would be refused by every node
            if now - changed < self.lost_s:
                live.add(task.get("id"))
            else:
                silent.append((worker_id, task))
        return [(worker_id, task) for worker_id, task in silent if task.get("id") not in live]


class Rescue:
    """The backend's side: each lost task sent again once, to the model's shared queue."""

    def __init__(self, app, client, settings, queue: str, retry_policy: dict):
        self.app, self.redis, self.settings, self.queue, self.retry_policy = app, client, settings, queue, retry_policy
        self.silence = Silence(settings.node_lost_s)
        self.done: set[str] = set()  # ids of lost tasks this run has dealt with

    def check(self, beats: dict[str, str], open_of, apply) -> None:
        """`open_of(job_id, indices)`: (which of them are still open, whether the job was canceled);
        `apply(event)`: the executor's own. One task that cannot be dealt with leaves the others be."""
        for worker_id, task in self.silence.lost(beats, self.settings.model_id, time.monotonic()):
            if task["id"] in self.done:
                continue
            try:
                self.send_again(worker_id, task, open_of, apply)
                self.done.add(task["id"])
            except Exception:  # tried again at the next look, a few seconds on
                log.exception("the lost task %s of %s could not be sent again", task["id"], worker_id)

    def settled(self, raw: str) -> bool:
        """Whether a heartbeat may be removed: it names no task of this model that was not dealt with."""
        try:
            beat = json.loads(raw)
            task = beat.get("task")
            ours = beat.get("model") == self.settings.model_id
            return not isinstance(task, dict) or task.get("id") in self.done or not ours
        except (ValueError, AttributeError):
            return True

    def send_again(self, worker_id: str, task: dict, open_of, apply) -> None:
        old_id = task["id"]
        if self.redis.exists(superseded_key(old_id)):  # sent again before this backend's restart
            return
        raw = self.redis.get(kwargs_key(old_id))
        if raw is None:
            log.error("%s went silent running task %s, whose description is gone: it comes back after the "
                      "broker's visibility timeout", worker_id, old_id)
            return
        kwargs = json.loads(raw)
        rescues = int(kwargs.get("rescues", 0)) + 1
        reason = f"its GPU node vanished {rescues} times while making it (last {worker_id})"
        limit, what = ca.longest_task_s(self.settings), task["name"]
        if task["name"] == ca.GENERATE:
            job_id = kwargs["task"]["job_id"]
            left, canceled = open_of(job_id, kwargs["task"]["indices"])
            if canceled and left:  # its node cannot report the cancel any more: this backend does
                apply(ev.ImagesCanceled(job_id, tuple(sorted(left))))
            if canceled or not left:  # finished, canceled, or not this backend's: nothing to make
                return
            if rescues > MAX_RESCUES:
                for index in sorted(left):
                    apply(ev.ImageFailed(job_id, index, reason))
                return
            kwargs["task"] = only_indices(kwargs["task"], left)
            limit = self.settings.image_timeout_s * len(left)
            what = f"job {job_id} images {sorted(left)}"
            apply(ev.ImagesRequeued(job_id, tuple(sorted(left))))
        elif rescues > MAX_RESCUES:
            apply(ev.TrainingFailed(kwargs["task"]["training_id"], reason) if task["name"] == ca.TRAIN
                  else ca.UpscaleDone(kwargs["request_id"], reason))
            return
        elif task["name"] == ca.TRAIN:
            what = f"training {kwargs['task']['training_id']} to step {kwargs['target']}"
        new_id = uuid.uuid4().hex
        self.app.send_task(task["name"], kwargs=kwargs | {"rescues": rescues}, queue=self.queue, task_id=new_id,
                           soft_time_limit=limit, time_limit=limit + ca.HARD_LIMIT_MARGIN_S, retry=True,
                           retry_policy=self.retry_policy)
        self.redis.set(superseded_key(old_id), new_id, ex=SUPERSEDED_TTL_S)
        log.warning("%s has not reported for %d s: its node is gone; %s sent again as task %s", worker_id,
                    self.silence.lost_s, what, new_id)
