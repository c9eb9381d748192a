"""A node that vanishes whole (switched off, its network gone) while it runs a task: the task is sent again
within LOST_S, instead of after the broker's visibility timeout (about 90 minutes with the defaults).

While a GPU process runs a task, its heartbeat names it ("task": id, name, kwargs). When that heartbeat is
LOST_S old and no fresher heartbeat names the same task, the backend sends a copy under a new id to the
model's shared queue, then marks the old id superseded (a Redis key that outlives the visibility timeout).
Why no fresher heartbeat: a GPU process killed alone is replaced by its node, which Celery hands the same
task at once; its successor beats under the same worker id and runs it.

A node that receives a superseded task (the broker redelivers the lost one after the visibility timeout)
acknowledges it and does nothing. A node that was only cut off for a while and comes back finishes its
copy: both copies make the same pixels from the same seeds, and a node skips an image already stored.

The order (send, then mark) means a backend that dies in between sends a second copy after its restart,
or leaves the old task to run after the visibility timeout: work may be done twice, never lost.
"""

import json
import logging
import uuid

from backend.gpu import celery_app as ca
from backend.gpu import executor as ev

log = logging.getLogger("showroom.celery")

LOST_S = 30  # six missed heartbeats: the node is gone, or cut off long enough that a copy is worth its cost
SUPERSEDED_TTL_S = ca.CANCEL_TTL_S  # longer than any visibility timeout: a redelivered old task still finds it


def superseded_key(task_id: str) -> str:
    return f"showroom:superseded:{task_id}"


def running(request) -> dict:
    """What a heartbeat says of the task a GPU process runs: enough for the backend to send it again."""
    return {"id": request.id, "name": request.task, "kwargs": request.kwargs,
            "queue": (request.delivery_info or {}).get("routing_key")}


def lost_tasks(beats: dict[str, str], now: float) -> list[tuple[str, dict]]:
    """(worker id, task) for each task whose worker has been silent for LOST_S, unless a worker that beat
    since runs the same task. `beats` is the WORKERS hash as Redis holds it."""
    parsed = {}
    for worker_id, raw in beats.items():
        try:
            beat = json.loads(raw)
            parsed[worker_id] = (now - float(beat["ts"]), beat.get("task"))
        except (ValueError, KeyError, TypeError):
            continue
    alive = {task["id"] for age, task in parsed.values() if task and age < LOST_S}
    return sorted((worker_id, task) for worker_id, (age, task) in parsed.items()
                  if task and age >= LOST_S and task.get("id") not in alive and task.get("name") in RESCUED)


def only_indices(payload: dict, keep: set[int]) -> dict:
    """A GENERATE payload (the fields of messages.Task) cut to the images in `keep`, in their order."""
    picks = [n for n, index in enumerate(payload["indices"]) if index in keep]
    cut = dict(payload)
    for name in ("indices", "seeds", "keys", "preview_keys"):
        if payload.get(name):
            cut[name] = [payload[name][n] for n in picks]
    return cut


class Rescue:
    """The backend's side: each lost task sent again once, to the model's shared queue."""

    def __init__(self, app, client, settings, queue: str, retry_policy: dict):
        self.app, self.redis, self.settings, self.queue, self.retry_policy = app, client, settings, queue, retry_policy
        self.done: set[str] = set()  # ids of lost tasks this run has dealt with

    def check(self, beats: dict[str, str], now: float, open_of, apply) -> None:
        """`open_of(job_id, indices)`: which of them are still open; `apply(event)`: the executor's own."""
        for worker_id, task in lost_tasks(beats, now):
            if task["id"] not in self.done:
                self.send_again(worker_id, task, open_of, apply)
                self.done.add(task["id"])

    def send_again(self, worker_id: str, task: dict, open_of, apply) -> None:
        old_id, kwargs = task["id"], dict(task.get("kwargs") or {})
        if self.redis.exists(superseded_key(old_id)):  # sent again before this backend's restart
            return
        limit, what = ca.longest_task_s(self.settings), task["name"]
        if task["name"] == ca.GENERATE:
            job_id = kwargs["task"]["job_id"]
            left = open_of(job_id, kwargs["task"]["indices"])
            if not left:  # finished, canceled, or not this backend's: nothing to make
                return
            kwargs["task"] = only_indices(kwargs["task"], left)
            limit = self.settings.image_timeout_s * len(left)
            what = f"job {job_id} images {sorted(left)}"
            apply(ev.ImagesRequeued(job_id, tuple(sorted(left))))
        elif task["name"] == ca.TRAIN:
            kwargs["rescue_of"] = old_id  # it may send the next chunk the lost task had claimed
            what = f"training {kwargs['task']['training_id']} to step {kwargs['target']}"
        new_id = uuid.uuid4().hex
        self.app.send_task(task["name"], kwargs=kwargs, queue=self.queue, task_id=new_id, soft_time_limit=limit,
                           time_limit=limit + ca.HARD_LIMIT_MARGIN_S, retry=True, retry_policy=self.retry_policy)
        self.redis.set(superseded_key(old_id), new_id, ex=SUPERSEDED_TTL_S)
        log.warning("%s has not reported for %d s: its node is gone; %s sent again as task %s", worker_id, LOST_S,
                    what, new_id)


RESCUED = (ca.GENERATE, ca.TRAIN, ca.UPSCALE)
