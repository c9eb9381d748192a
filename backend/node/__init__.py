"""A GPU node (EXECUTOR=celery), started with `python -m backend.node` (backend/node/__main__.py).

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

- `__main__`: the entry point: settings, the node's name, the Celery worker, starting again under a free name;
- `tasks`: the Celery tasks and the worker's signal handlers (what the main process reports);
- `gpu`: a GPU process: its pipeline, heartbeat and the work of each task;
- `bridge`: the local worker's pipe and cancel value, as events and a flag in Redis.
"""
