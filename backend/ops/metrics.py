"""Prometheus metrics, one registry per app (tests start several apps in one process)."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.jobs = Counter("showroom_jobs_submitted_total", "jobs accepted", registry=self.registry)
        self.refused = Counter("showroom_jobs_refused_total", "job submissions refused", ["reason"],
                               registry=self.registry)
        self.images = Counter("showroom_images_total", "images finished, by final status", ["status"],
                              registry=self.registry)
        self.job_status = Counter("showroom_jobs_finished_total", "jobs finished, by final status", ["status"],
                                  registry=self.registry)
        self.task_seconds = Histogram("showroom_batch_seconds", "seconds a worker spent on one batch",
                                      buckets=(0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128, 300),
                                      registry=self.registry)
        self.worker_load = Histogram("showroom_worker_load_seconds", "seconds to load and warm a worker",
                                     buckets=(1, 5, 10, 30, 60, 120, 300), registry=self.registry)
        self.pending = Gauge("showroom_queue_pending_images", "images waiting for a worker", registry=self.registry)
        self.workers = Gauge("showroom_workers", "worker processes by state", ["state"], registry=self.registry)

    def on_event(self, kind: str, info: dict) -> None:
        """Called by the scheduler for each event worth counting."""
        if kind == "image":
            self.images.labels(info["status"]).inc()
        elif kind == "job":
            self.job_status.labels(info["status"]).inc()
        elif kind == "task":
            self.task_seconds.observe(info["seconds"])
        elif kind == "worker_ready":
            self.worker_load.observe(info["load_s"])

    def render(self, snapshot: dict) -> bytes:
        self.pending.set(snapshot["pending"])
        for state in ("starting", "ready", "busy", "dead"):
            self.workers.labels(state).set(sum(w["state"] == state for w in snapshot["workers"]))
        return generate_latest(self.registry)
