"""A hand-written fake of the GPU worker, for scheduler tests: same messages, scripted behaviour."""

import os
import time
from pathlib import Path

from backend.gpu import messages as m
from backend.storage import LocalStorage


def run_fake_worker(worker_id, settings, conn, cancel_task, workers=1):
    behaviour = settings.behaviour
    if behaviour == "load_fail":
        Path(settings.marker_dir, f"load-{worker_id}-{time.monotonic_ns()}").touch()
        conn.send(m.LoadFailed(worker_id, "could not load model 'fake': out of memory"))
        return
    conn.send(m.Ready(worker_id, f"fake:{worker_id}", 64, 0.0))
    while True:
        msg = conn.recv()
        if isinstance(msg, m.Stop):
            return
        if isinstance(msg, m.UpscaleTask):
            _upscale(worker_id, settings, conn, msg)
            continue
        conn.send(m.Started(msg.task_id))
        marker = Path(settings.marker_dir) / f"died-{msg.job_id}"
        if behaviour == "always_die" or (behaviour == "die_once" and not marker.exists()):
            marker.touch()
            os._exit(9)
        if behaviour == "device_error":
            os._exit(3)  # as the real worker leaves after a CUDA error
        if behaviour == "hang":
            time.sleep(3600)
        if behaviour == "upload_then_hang":  # the image reaches storage, the report never comes
            LocalStorage(Path(settings.storage_dir)).put(msg.keys[0], b"\x89PNG made", "image/png")
            time.sleep(3600)
        canceled = False
        for index in msg.indices:
            for _ in range(20):  # a few "steps", each checking for cancel like the step callback does
                canceled = cancel_task.value == msg.task_id
                if canceled:
                    break
                time.sleep(settings.step_s)
            if canceled:
                break
            Path(settings.marker_dir, f"{msg.job_id}-{index}-w{worker_id}-b{len(msg.indices)}").touch()
            conn.send(m.ImageDone(msg.task_id, index))
        conn.send(m.Done(msg.task_id, canceled=canceled, seconds=0.01))


def _upscale(worker_id, settings, conn, msg):
    marker = Path(settings.marker_dir) / f"upscale-{settings.behaviour}"
    if settings.behaviour == "upscale_dies_once" and not marker.exists():
        marker.touch()
        os._exit(9)
    if settings.behaviour == "upscale_hangs_once" and not marker.exists():
        marker.touch()
        time.sleep(3600)
    LocalStorage(Path(settings.storage_dir)).put(msg.target_key, b"\x89PNG upscaled by worker %d" % worker_id)
    conn.send(m.Done(msg.task_id, seconds=0.01))
