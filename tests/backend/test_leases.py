"""Conditional writes (local disk and real S3) and the job leases built on them: two backends on one
bucket take back only the jobs of a backend that is gone, and of two racing for one job exactly one wins."""

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest

from backend.contract import new_job_id, training_owner_key, unfinished_key
from backend.jobs.leases import BACKENDS, Leases, machine_id
from backend.storage import LocalStorage, ObjectMissing, WriteConflict
from tests.conftest import open_test_storage, s3_env


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path):
    if request.param == "local":
        return LocalStorage(tmp_path / "root")
    server = request.getfixturevalue("s3")
    return open_test_storage(s3_env(server, f"leases-{uuid.uuid4().hex[:8]}"))


def test_a_folder_whose_last_marker_was_deleted_lists_no_key(storage):
    """SeaweedFS then lists the folder itself ("index/unfinished/"): recovery read it as a job with no id."""
    job_id = new_job_id()
    storage.put(unfinished_key(job_id), b"")
    storage.delete(unfinished_key(job_id))
    assert storage.list_files("index/unfinished/") == []
    storage.put(unfinished_key(job_id), b"")
    assert storage.list_files("index/unfinished/") == [unfinished_key(job_id)]


def test_put_if_creates_only_when_absent_and_replaces_only_the_version_seen(storage):
    storage.put_if("index/x", b"first", None)
    with pytest.raises(WriteConflict):
        storage.put_if("index/x", b"second", None)
    data, version = storage.get_versioned("index/x")
    assert data == b"first"
    storage.put("index/x", b"changed behind our back")
    with pytest.raises(WriteConflict):
        storage.put_if("index/x", b"third", version)
    data, version = storage.get_versioned("index/x")
    storage.put_if("index/x", b"fourth", version)
    assert storage.get("index/x") == b"fourth"
    with pytest.raises(ObjectMissing):
        storage.get_versioned("index/none")


def test_of_many_racing_conditional_writes_exactly_one_wins(storage):
    storage.put("index/race", b"")
    _, version = storage.get_versioned("index/race")
    start, wins = threading.Barrier(6), []

    def racer(n: int):
        start.wait()
        try:
            storage.put_if("index/race", f"racer-{n}".encode(), version)
            wins.append(n)
        except WriteConflict:
            pass

    threads = [threading.Thread(target=racer, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(wins) == 1, wins
    assert storage.get("index/race") == f"racer-{wins[0]}".encode()


def marker(storage, owner: str) -> str:
    job_id = new_job_id()
    storage.put(unfinished_key(job_id), owner.encode(), "text/plain")
    return job_id


def test_a_job_of_a_live_backend_is_left_alone_and_taken_once_it_stops(storage):
    first, second = Leases(storage, machine="box-1").start(), Leases(storage, machine="box-2")
    try:
        job_id = marker(storage, first.me)
        assert not second.claim(job_id), "the first backend is alive: its job is not taken"
        assert storage.get(unfinished_key(job_id)) == first.me.encode()
        assert second.gone() == set()
        first.close()  # a clean stop removes the heartbeat
        time.sleep(2.1)  # past the answer second gave about first a moment ago
        assert second.gone() == {first.me}
        assert second.claim(job_id)
        assert storage.get(unfinished_key(job_id)) == second.me.encode()
        assert second.claim(job_id), "its own job: still its own"
    finally:
        first.close()


def test_a_job_runs_elsewhere_while_its_live_backend_holds_it(storage):
    first, second = Leases(storage, machine="box-1").start(), Leases(storage, machine="box-2")
    try:
        job_id = marker(storage, first.me)
        assert second.runs_elsewhere(job_id) == first.me and first.runs_elsewhere(job_id) is None
        assert second.runs_elsewhere(new_job_id()) is None, "no marker: finished, nobody runs it"
        first.close()
        time.sleep(2.1)  # past the answer second gave about first a moment ago
        assert second.runs_elsewhere(job_id) is None, "its backend is gone: this one may act on it"
    finally:
        first.close()


def test_an_expired_heartbeat_or_an_unowned_marker_can_be_taken(storage):
    leases = Leases(storage)
    storage.put(f"{BACKENDS}far-away.json", json.dumps({"owner": "far-away", "machine": "elsewhere", "pid": 1,
                                                         "expires": time.time() - 1}).encode())
    assert leases.claim(marker(storage, "far-away")), "its lease expired"
    assert leases.claim(marker(storage, "")), "a marker from before leases names nobody"
    assert leases.claim(marker(storage, "never-heard-of")), "no heartbeat at all"
    storage.put(f"{BACKENDS}elsewhere.json", json.dumps({"owner": "elsewhere", "machine": "another-box", "pid": 1,
                                                          "expires": time.time() + 60}).encode())
    assert not leases.claim(marker(storage, "elsewhere")), "alive on another machine: its pid means nothing here"


def test_an_earlier_run_on_this_machine_whose_process_is_gone_is_gone_at_once(storage):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    leases = Leases(storage)
    storage.put(f"{BACKENDS}earlier.json", json.dumps({"owner": "earlier", "machine": leases.machine,
                                                        "pid": int(dead.stdout), "expires": time.time() + 60}).encode())
    assert leases.claim(marker(storage, "earlier")), "restarted on this machine: the old process is gone"


def test_two_backends_racing_for_one_job_both_see_one_owner(storage):
    job_id = marker(storage, "gone-backend")
    contenders = [Leases(storage, machine=f"box-{n}").start() for n in range(4)]
    start, won = threading.Barrier(4), []

    def contend(leases):
        start.wait()
        if leases.claim(job_id):
            won.append(leases.me)

    threads = [threading.Thread(target=contend, args=(c,)) for c in contenders]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for leases in contenders:
        leases.close()
    assert len(won) == 1, won
    assert storage.get(unfinished_key(job_id)) == won[0].encode()


def test_a_training_of_a_live_backend_is_left_alone_and_one_from_before_leases_is_taken_once(storage):
    first, second = Leases(storage, machine="box-1").start(), Leases(storage, machine="box-2").start()
    try:
        owned = new_job_id()
        storage.put(training_owner_key(owned), first.me.encode(), "text/plain")
        assert not second.claim_training(owned), "the first backend is alive: its training is not taken"
        legacy = new_job_id()  # no owner marker: written before trainings had leases
        assert first.claim_training(legacy)
        assert not second.claim_training(legacy), "the first took it: it is alive, so the training is its own"
        assert storage.get(training_owner_key(legacy)) == first.me.encode()
        first.close()
        time.sleep(2.1)  # past the answer second gave about first a moment ago
        assert second.claim_training(owned) and second.claim_training(legacy)
        assert storage.get(training_owner_key(owned)) == second.me.encode()
    finally:
        first.close()
        second.close()


def test_a_machine_is_named_with_its_pid_namespace_where_a_process_id_means_something():
    """Two containers with the host's name (host networking) and one image's machine id are still told apart:
    a process id seen from one says nothing about the other."""
    namespace = os.readlink("/proc/self/ns/pid").strip("pid:[]")
    assert machine_id().endswith(f":{namespace}") and machine_id().startswith(socket.gethostname())
