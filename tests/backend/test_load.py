"""Load: 40 concurrent submissions against a small queue. None lost, none duplicated, every refusal a 429."""

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import requests

from tests.backend.test_faults import lost_images


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
    images, lost = 0, []
    for ticket in tickets:
        job = backend.wait_job(ticket["id"], timeout=240)
        assert [i["key"] for i in job["images"]] == [i["key"] for i in ticket["images"]]
        images += len(job["images"])
        lost += lost_images(backend, job)
    record_property("load_submissions", len(responses))
    record_property("load_accepted", codes[202])
    record_property("load_refused_429", codes[429])
    record_property("load_images", images)
    record_property("images_checked", images)
    record_property("images_lost", len(lost))
    assert not lost, lost
    promised = {i["key"] for t in tickets for i in t["images"]}
    stored = {k for t in tickets for k in backend.storage.list_files(f"jobs/{t['id']}/") if k.endswith(".png")}
    assert stored <= promised, f"objects no ticket promised: {sorted(stored - promised)[:3]}"


def test_rate_limit_per_client(make_backend):
    backend = make_backend(RATE_LIMIT_PER_MINUTE="3")
    spec = {"prompt": "x", "num_images": 1, "steps": 2}
    codes = [backend.post("/v1/jobs", json=spec).status_code for _ in range(4)]
    assert codes == [202, 202, 202, 429]
    refused = backend.post("/v1/jobs", json=spec)
    assert refused.status_code == 429 and "3 a minute" in refused.json()["detail"]
    assert int(refused.headers["Retry-After"]) >= 1
