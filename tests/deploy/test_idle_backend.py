"""Idle stop wired into the real backend: after IDLE_STOP_MINUTES without work it stops its vast.ai instance."""

import time

import requests

from tests.deploy.vast_standin import VastStandIn


def test_backend_stops_its_instance_when_idle(make_backend):
    with VastStandIn() as vast:
        backend = make_backend(IDLE_STOP_MINUTES="0.1", CONTAINER_ID="4242", CONTAINER_API_KEY="instance-key-xyz",
                               VAST_API_URL=vast.api)
        job = backend.wait_job(backend.submit({"prompt": "one job", "num_images": 1, "steps": 2})["id"])
        assert job["status"] == "succeeded"
        assert not vast.requests("/api/v0/instances"), "a box that just worked is not idle"
        deadline = time.monotonic() + 30
        while not vast.requests("/api/v0/instances") and time.monotonic() < deadline:
            backend.get("/health")  # health checks are not work: they must not keep the box alive
            stranger = requests.get(f"{backend.url}/v1/jobs", timeout=5)  # nor a scanner without the key
            assert stranger.status_code == 401
            time.sleep(0.5)
        stops = [s for s in vast.seen if s.path == "/api/v0/instances/4242/"]
        assert len(stops) == 1 and stops[0].method == "PUT" and stops[0].body == {"state": "stopped"}
        assert stops[0].auth == "Bearer instance-key-xyz"
        assert "instance-key-xyz" not in backend.log()
