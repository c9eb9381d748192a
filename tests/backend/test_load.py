"""Load: 40 concurrent submissions against a small queue. None lost, none duplicated, every refusal a 429."""

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import requests


def test_forty_concurrent_submissions(make_backend, record_property):
    backend = make_backend(WORKERS="2", QUEUE_MAX_IMAGES="24", RATE_LIMIT_PER_MINUTE="0")

    def submit(i: int) -> requests.Response:
        spec = {"prompt": f"load {i}", "num_images": 1 + i % 3, "steps": 2, "seed": i}
        return requests.post(backend.url + "/v1/jobs", json=spec, headers=backend.headers, timeout=60)

    with ThreadPoolExecutor(40) as pool:
        responses = list(pool.map(submit, range(40)))
    codes = Counter(r.status_code for r in responses)
    assert set(codes) <= {202, 429}, codes
    assert codes[202] >= 8 and codes[429] >= 1, f"the queue should both take work and refuse some: {codes}"
    for r in responses:
        if r.status_code == 429:
            assert int(r.headers["Retry-After"]) > 0 and "queue is full" in r.json()["detail"]

    tickets = [r.json() for r in responses if r.status_code == 202]
    assert len({t["id"] for t in tickets}) == len(tickets), "a job id handed out twice"
    stored_ids = set(backend.storage.list_dirs("jobs/"))
    assert stored_ids == {t["id"] for t in tickets}, "refused submissions must store nothing, accepted ones all"
    images = 0
    for ticket in tickets:
        job = backend.wait_job(ticket["id"], timeout=240)
        assert len(job["images"]) == len(ticket["images"])
        for img in job["images"]:
            images += 1
            if img["status"] == "succeeded":
                assert backend.storage.exists(img["key"])
            else:
                assert img["status"] == "failed" and img["error"], img
    record_property("load_submissions", len(responses))
    record_property("load_accepted", codes[202])
    record_property("load_refused_429", codes[429])
    record_property("load_images", images)
    stored_pngs = [k for t in tickets for k in backend.storage.list_files(f"jobs/{t['id']}") if k[-5].isdigit()]
    assert len(stored_pngs) <= images and len(set(stored_pngs)) == len(stored_pngs)


def test_rate_limit_per_client(make_backend):
    backend = make_backend(RATE_LIMIT_PER_MINUTE="3")
    spec = {"prompt": "x", "num_images": 1, "steps": 2}
    codes = [backend.post("/v1/jobs", json=spec).status_code for _ in range(4)]
    assert codes == [202, 202, 202, 429]
    refused = backend.post("/v1/jobs", json=spec)
    assert refused.status_code == 429 and "3 a minute" in refused.json()["detail"]
    assert int(refused.headers["Retry-After"]) >= 1
