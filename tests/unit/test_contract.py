"""backend/contract.py against ../shared/CONTRACT.md: job ids, names, the storage layout and the status rules."""

import time
from itertools import pairwise
from types import SimpleNamespace
from urllib.parse import quote

import pytest

from backend import contract
from backend.contract import (
    TERMINAL,
    Status,
    check_name,
    created_us,
    cutout_key,
    image_key,
    input_key,
    is_job_id,
    job_prefix,
    layout_key,
    lora_key,
    manifest_key,
    new_job_id,
    packshot_key,
    preview_key,
    product_key,
    rollup,
    training_key,
    upscale_key,
)

ID = "0123456789abcdef0123456789abcdef"


# ----- job ids -----
def test_new_job_id_is_32_lowercase_hex():
    job_id = new_job_id()
    assert len(job_id) == 32
    assert set(job_id) <= set("0123456789abcdef")
    assert is_job_id(job_id)


def test_new_job_id_is_url_safe():
    job_id = new_job_id()
    assert quote(job_id, safe="") == job_id


def test_new_job_id_strictly_increases_over_10k_calls():
    ids = [new_job_id() for _ in range(10_000)]
    assert all(a < b for a, b in pairwise(ids))


def test_new_job_id_increases_when_the_clock_stands_still(monkeypatch):
    frozen = time.time_ns()
    monkeypatch.setattr(contract, "_last_us", contract._last_us)  # restored after: later ids follow the real clock
    monkeypatch.setattr(contract, "time", SimpleNamespace(time_ns=lambda: frozen))
    ids = [new_job_id() for _ in range(5)]
    assert ids == sorted(set(ids))
    stamps = [created_us(i) for i in ids]
    assert stamps == list(range(stamps[0], stamps[0] + 5))


def test_new_job_id_increases_when_the_clock_goes_back(monkeypatch):
    first = new_job_id()
    monkeypatch.setattr(contract, "_last_us", contract._last_us)
    monkeypatch.setattr(contract, "time", SimpleNamespace(time_ns=lambda: 1_000_000_000))  # 1970
    assert new_job_id() > first


def test_new_job_id_created_us_is_now():
    before = time.time_ns() // 1000
    job_id = new_job_id()
    after = time.time_ns() // 1000
    # the process-wide counter may run a little ahead of the clock after a burst of ids
    assert before <= created_us(job_id) <= after + 1_000_000


def test_new_job_id_carries_random_bits():
    tails = {new_job_id()[13:] for _ in range(1000)}
    assert len(tails) == 1000
    assert all(len(t) == 19 for t in tails)  # 76 bits


@pytest.mark.parametrize("value", [ID, "f" * 32, "0" * 32])
def test_is_job_id_accepts_32_hex(value):
    assert is_job_id(value) is True


@pytest.mark.parametrize("value", [None, "", ID.upper(), ID[:-1], ID + "0", "g" * 32, "../" + ID[3:], ID[:16] + "-" +
                                   ID[17:], " " + ID[1:]])
def test_is_job_id_refuses_others(value):
    assert is_job_id(value) is False


def test_is_job_id_refuses_a_trailing_newline():
    assert is_job_id(ID + "\n") is False


# ----- names -----
@pytest.mark.parametrize("name", ["a", "A1", "bottle-2024_v2", "9lives", "x" * 64])
def test_check_name_accepts_good_names(name):
    assert check_name("product", name) == name


@pytest.mark.parametrize("name", ["", "-a", "_a", "a b", "a/b", "../a", "a.b", "x" * 65, "café", "a\\b", "a\x00"])
def test_check_name_refuses_bad_names_with_the_value(name):
    with pytest.raises(ValueError) as info:
        check_name("product", name)
    message = str(info.value)
    assert message.startswith("product name must be 1-64 letters, digits, '-' or '_'")
    assert message.endswith(f"got {name!r}")


def test_check_name_message_names_the_kind():
    with pytest.raises(ValueError, match="^LoRA name must be"):
        check_name("LoRA", "bad name")


def test_check_name_refuses_a_trailing_newline():
    with pytest.raises(ValueError):
        check_name("product", "bottle\n")


# ----- storage layout, literally as CONTRACT.md's table -----
@pytest.mark.parametrize("key, expected", [
    (manifest_key("abc"), "jobs/abc/job.json"),
    (job_prefix("abc"), "jobs/abc/"),
    (input_key("abc"), "jobs/abc/input.png"),
    (cutout_key("abc"), "jobs/abc/cutout.png"),
    (layout_key("abc"), "jobs/abc/layout.png"),
    (preview_key("abc", 3), "jobs/abc/3_preview.jpg"),
    (image_key("abc", 3), "jobs/abc/3.png"),
    (image_key("abc", 0), "jobs/abc/0.png"),
    (upscale_key("jobs/abc/3.png"), "jobs/abc/3_x4.png"),
    (upscale_key(image_key("abc", 12)), "jobs/abc/12_x4.png"),
    (lora_key("bottle"), "products/bottle.safetensors"),
    (product_key("bottle"), "products/bottle.json"),
    (packshot_key("bottle"), "products/bottle.png"),
    (training_key("t1"), "trainings/t1/job.json"),
])
def test_storage_keys_match_the_contract(key, expected):
    assert key == expected


def test_every_job_key_is_under_the_job_prefix():
    keys = [manifest_key(ID), input_key(ID), cutout_key(ID), layout_key(ID), preview_key(ID, 1), image_key(ID, 1),
            upscale_key(image_key(ID, 1))]
    assert all(k.startswith(job_prefix(ID)) for k in keys)
    assert len(set(keys)) == len(keys)


@pytest.mark.parametrize("make_key", [lora_key, product_key, packshot_key])
def test_product_keys_refuse_bad_names(make_key):
    with pytest.raises(ValueError, match="'../etc'"):
        make_key("../etc")


# ----- status -----
@pytest.mark.parametrize("status, terminal", [
    (Status.queued, False), (Status.running, False),
    (Status.succeeded, True), (Status.failed, True), (Status.canceled, True),
])
def test_status_is_terminal(status, terminal):
    assert status.is_terminal() is terminal
    assert (status.value in TERMINAL) is terminal


def test_status_values_are_the_contract_strings():
    assert [s.value for s in Status] == ["queued", "running", "succeeded", "failed", "canceled"]
    assert Status.queued == "queued"


@pytest.mark.parametrize("statuses, expected", [
    (["queued"], "queued"),
    (["queued", "queued", "queued"], "queued"),
    (["running"], "running"),
    (["queued", "running"], "running"),
    (["queued", "succeeded"], "running"),
    (["queued", "failed"], "running"),
    (["queued", "canceled"], "running"),
    (["running", "succeeded", "failed", "canceled"], "running"),
    (["succeeded"], "succeeded"),
    (["succeeded", "succeeded"], "succeeded"),
    (["failed"], "failed"),
    (["succeeded", "failed"], "failed"),
    (["failed", "succeeded", "succeeded"], "failed"),
    (["canceled"], "canceled"),
    (["succeeded", "canceled"], "canceled"),
    (["failed", "canceled"], "canceled"),
    (["canceled", "failed", "succeeded"], "canceled"),
])
def test_rollup(statuses, expected):
    assert rollup(statuses) == Status(expected)
    assert rollup(Status(s) for s in statuses) == Status(expected)


def test_rollup_refuses_an_unknown_status():
    with pytest.raises(ValueError, match="'done'"):
        rollup(["succeeded", "done"])
