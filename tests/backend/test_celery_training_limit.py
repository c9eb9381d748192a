"""TRAINING_TIMEOUT_S with EXECUTOR=celery: a training whose chunks outlast it is stopped by the backend, as
the local scheduler stops one; against the real Redis, with the executor in this process and no node (so the
first chunk waits in the broker for ever, as behind a backlog)."""

import threading

from backend.config import Settings
from backend.gpu import celery_app as ca
from backend.gpu import executor as ev
from backend.gpu.celery_executor import CeleryExecutor
from backend.gpu.messages import TrainTask
from backend.storage import LocalStorage
from tests.backend.celery_parts import redis_server, wait_until  # noqa: F401 (fixture)


def test_a_training_past_training_timeout_s_is_stopped_with_the_reason(redis_server, tmp_path):  # noqa: F811
    settings = Settings(executor="celery", broker_url=redis_server.url, model_id="limit-test-model",
                        storage_url=f"file://{tmp_path}", training_timeout_s=1)
    events, lock = [], threading.Lock()

    def sink(event):
        with lock:
            events.append(event)

    executor = CeleryExecutor(settings, LocalStorage(tmp_path), on_event=sink)
    executor.start()
    try:
        task = TrainTask(task_id=0, training_id="limit-1", trigger="zxq", photo_keys=("p.png",), steps=200, rank=4,
                         resolution=64, checkpoint_every=50)
        executor.train(task)
        assert "limit-1" in executor.training_deadlines
        wait_until(lambda: executor._time_out_trainings() or events, timeout=10, what="the training timed out")
        with lock:
            assert events == [ev.TrainingFailed("limit-1", "timed out after 1 s (TRAINING_TIMEOUT_S=1)")], events
        assert executor.redis.get(ca.stop_training_key("limit-1")) == "timed out after 1 s (TRAINING_TIMEOUT_S=1)", \
            "its chunk, still in the broker, is dropped when a node takes it"
        assert not executor.training_deadlines
    finally:
        executor.stop()
