"""backend/storage.py: LocalStorage on a tmp folder, put_retrying against a storage that fails, open_storage."""

import os
from types import SimpleNamespace

import pytest

import backend.storage as storage_module
from backend.storage import (
    LocalStorage,
    ObjectMissing,
    S3Storage,
    Storage,
    StorageError,
    check_key,
    open_storage,
    put_retrying,
)

ESCAPING_KEYS = ["../x", "/etc/passwd", "a/../../x", "jobs/../../x", "./a", "a/.", "a//b", "", "a\\b", "a\x00b",
                 "jobs/"]


@pytest.fixture
def store(tmp_path) -> LocalStorage:
    return LocalStorage(tmp_path / "root")


class FakeClock:
    """The one time seam of put_retrying: `sleep` moves `monotonic` on, and is recorded."""

    def __init__(self):
        self.now, self.sleeps = 1000.0, []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(storage_module, "time", SimpleNamespace(monotonic=fake.monotonic, sleep=fake.sleep))
    return fake


class FlakyStorage(LocalStorage):
    """A real LocalStorage whose first `failures` writes fail as an unreachable store would."""

    def __init__(self, root, failures: int):
        super().__init__(root)
        self.failures, self.attempts = failures, 0

    def put(self, key, data, content_type="application/octet-stream"):
        self.attempts += 1
        if self.attempts <= self.failures:
            raise StorageError(f"store down (attempt {self.attempts})")
        super().put(key, data, content_type)


# ----- LocalStorage -----
def test_local_put_then_get_returns_the_bytes(store):
    store.put("jobs/abc/0.png", b"\x89PNG data", "image/png")
    assert store.get("jobs/abc/0.png") == b"\x89PNG data"
    assert (store.root / "jobs" / "abc" / "0.png").read_bytes() == b"\x89PNG data"


def test_local_exists_only_after_put(store):
    assert store.exists("jobs/abc/job.json") is False
    store.put("jobs/abc/job.json", b"{}")
    assert store.exists("jobs/abc/job.json") is True


def test_local_exists_is_false_for_a_folder(store):
    store.put("jobs/abc/job.json", b"{}")
    assert store.exists("jobs/abc") is False


def test_local_get_missing_key_raises_object_missing(store):
    with pytest.raises(ObjectMissing, match="jobs/none/job.json"):
        store.get("jobs/none/job.json")


def test_local_object_missing_is_a_storage_error():
    assert issubclass(ObjectMissing, StorageError)


def test_local_put_replaces_the_whole_object(store):
    store.put("k.bin", b"a much longer first version")
    store.put("k.bin", b"short")
    assert store.get("k.bin") == b"short"


def test_local_put_leaves_no_temporary_file(store):
    store.put("jobs/abc/0.png", b"x" * 1000)
    assert sorted(p.name for p in (store.root / "jobs" / "abc").iterdir()) == ["0.png"]


def test_local_delete_removes_the_object(store):
    store.put("jobs/abc/0.png", b"x")
    store.delete("jobs/abc/0.png")
    assert store.exists("jobs/abc/0.png") is False
    with pytest.raises(ObjectMissing):
        store.get("jobs/abc/0.png")


def test_local_delete_missing_key_is_not_an_error(store):
    assert store.delete("jobs/none/0.png") is None
    assert store.list_dirs("jobs/") == []


def test_local_version_changes_when_replaced(store):
    store.put("products/a.safetensors", b"first")
    first = store.version("products/a.safetensors")
    store.put("products/a.safetensors", b"second, longer")
    assert store.version("products/a.safetensors") != first


def test_local_version_is_stable_while_unchanged(store):
    store.put("products/a.safetensors", b"first")
    assert store.version("products/a.safetensors") == store.version("products/a.safetensors")


def test_local_version_changes_when_replaced_by_same_size_within_one_clock_tick(store):
    store.put("products/a.safetensors", b"AAAA")
    before = (store.root / "products" / "a.safetensors").stat()
    first = store.version("products/a.safetensors")
    store.put("products/a.safetensors", b"BBBB")
    # a filesystem whose clock has not ticked between the two writes (1 s on some mounts, a jiffy on others)
    os.utime(store.root / "products" / "a.safetensors", ns=(before.st_atime_ns, before.st_mtime_ns))
    assert store.get("products/a.safetensors") == b"BBBB"
    assert store.version("products/a.safetensors") != first


def test_local_version_of_missing_key_raises_object_missing(store):
    with pytest.raises(ObjectMissing, match="nope.json"):
        store.version("products/nope.json")


def test_local_list_dirs_gives_immediate_subfolders_sorted(store):
    for key in ("jobs/b/job.json", "jobs/a/job.json", "jobs/a/deep/x.png", "products/p.json"):
        store.put(key, b"x")
    assert store.list_dirs("jobs/") == ["a", "b"]
    assert store.list_dirs("jobs") == ["a", "b"]
    assert store.list_dirs("") == ["jobs", "products"]


def test_local_list_dirs_of_missing_prefix_is_empty(store):
    assert store.list_dirs("jobs/") == []


def test_local_list_files_gives_direct_keys_only(store):
    for key in ("jobs/a/job.json", "jobs/a/0.png", "jobs/a/deep/x.png", "jobs/b/job.json"):
        store.put(key, b"x")
    assert store.list_files("jobs/a/") == ["jobs/a/0.png", "jobs/a/job.json"]
    assert store.list_files("jobs/a") == ["jobs/a/0.png", "jobs/a/job.json"]


def test_local_list_files_skips_unfinished_writes(store):
    store.put("products/p.json", b"{}")
    (store.root / "products" / ".tmp-abc123").write_bytes(b"half")
    assert store.list_files("products/") == ["products/p.json"]


def test_local_list_files_of_missing_prefix_is_empty(store):
    assert store.list_files("products/") == []


def test_local_list_files_keys_can_be_read_back(store):
    store.put("jobs/a/0.png", b"zero")
    assert [store.get(k) for k in store.list_files("jobs/a/")] == [b"zero"]


def test_local_list_files_at_the_root_gives_valid_keys(store):
    store.put("top.json", b"{}")
    assert store.list_files("") == ["top.json"]


def test_local_list_files_refuses_a_prefix_outside_the_root(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not storage")
    store = LocalStorage(tmp_path / "root")
    with pytest.raises(ValueError):
        store.list_files("../outside")


def test_local_ping_on_empty_store_succeeds(store):
    assert store.ping() is None


def test_ping_raises_when_listing_fails(tmp_path):
    class Unreachable(LocalStorage):
        def list_dirs(self, prefix):
            raise StorageError("connection refused")

    with pytest.raises(StorageError, match="connection refused"):
        Unreachable(tmp_path).ping()


def test_local_url_names_the_root(tmp_path):
    assert LocalStorage(tmp_path / "r").url == f"file://{tmp_path / 'r'}"


def test_local_presigned_url_is_none(store):
    store.put("a.png", b"x")
    assert store.presigned_url("a.png", 60) is None


# ----- check_key -----
@pytest.mark.parametrize("key", ["jobs/abc/job.json", "products/a-b_c.safetensors", "a"])
def test_check_key_accepts_plain_keys(key):
    assert check_key(key) == key


@pytest.mark.parametrize("key", ESCAPING_KEYS)
def test_check_key_refuses_keys_that_could_escape(key):
    with pytest.raises(ValueError, match="invalid storage key") as info:
        check_key(key)
    assert repr(key) in str(info.value)


@pytest.mark.parametrize("key", ["../x", "/etc/passwd", "a/../../x"])
def test_local_refuses_escaping_keys_for_every_verb(tmp_path, key):
    store = LocalStorage(tmp_path / "root")
    for call in (lambda: store.put(key, b"x"), lambda: store.get(key), lambda: store.exists(key),
                 lambda: store.delete(key), lambda: store.version(key)):
        with pytest.raises(ValueError, match="invalid storage key"):
            call()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]
    assert list((tmp_path / "root").iterdir()) == []


# ----- put_retrying -----
def test_put_retrying_writes_after_transient_failures(tmp_path, clock):
    store = FlakyStorage(tmp_path, failures=3)
    put_retrying(store, "jobs/a/0.png", b"img", "image/png", budget_s=60, sleep=clock.sleep)
    assert store.get("jobs/a/0.png") == b"img"
    assert store.attempts == 4
    assert clock.sleeps == [0.5, 1.0, 2.0]


def test_put_retrying_first_try_success_does_not_sleep(tmp_path, clock):
    store = FlakyStorage(tmp_path, failures=0)
    put_retrying(store, "k", b"v", "text/plain", budget_s=60, sleep=clock.sleep)
    assert (store.attempts, clock.sleeps) == (1, [])


def test_put_retrying_gives_up_within_budget_and_raises_the_last_error(tmp_path, clock):
    store = FlakyStorage(tmp_path, failures=10**6)
    with pytest.raises(StorageError, match=r"attempt 11\)"):
        put_retrying(store, "k", b"v", "text/plain", budget_s=60, sleep=clock.sleep)
    assert clock.sleeps == [0.5, 1.0, 2.0, 4.0] + [8.0] * 6  # backoff doubles, capped at 8 s
    assert sum(clock.sleeps) <= 60
    assert store.attempts == 11
    assert not store.exists("k")


def test_put_retrying_with_zero_budget_tries_once(tmp_path, clock):
    store = FlakyStorage(tmp_path, failures=1)
    with pytest.raises(StorageError, match="attempt 1"):
        put_retrying(store, "k", b"v", "text/plain", budget_s=0, sleep=clock.sleep)
    assert (store.attempts, clock.sleeps) == (1, [])


def test_put_retrying_does_not_retry_a_bad_key(tmp_path, clock):
    store = FlakyStorage(tmp_path, failures=0)
    with pytest.raises(ValueError, match="invalid storage key"):
        put_retrying(store, "../x", b"v", "text/plain", budget_s=60, sleep=clock.sleep)
    assert clock.sleeps == []


# ----- open_storage -----
def test_open_storage_file_url_gives_local_storage(tmp_path):
    store = open_storage(f"file://{tmp_path}/data")
    assert isinstance(store, LocalStorage)
    assert store.root == tmp_path / "data"
    assert (tmp_path / "data").is_dir()


def test_open_storage_s3_url_builds_s3_storage_with_prefix():
    store = open_storage("s3://shop-bucket/env/prod/", endpoint_url="http://127.0.0.1:1", access_key="k",
                         secret_key="s", region="eu-west-1")
    assert isinstance(store, S3Storage)
    assert (store.bucket, store.prefix, store.url) == ("shop-bucket", "env/prod/", "s3://shop-bucket/env/prod")
    assert store.client.meta.endpoint_url == "http://127.0.0.1:1"
    assert store.client.meta.region_name == "eu-west-1"
    assert store._key("jobs/a/job.json") == "env/prod/jobs/a/job.json"


def test_open_storage_s3_url_without_prefix():
    store = open_storage("s3://shop-bucket", endpoint_url="http://127.0.0.1:1", access_key="k", secret_key="s")
    assert (store.prefix, store.url) == ("", "s3://shop-bucket")
    assert store._key("jobs/a/job.json") == "jobs/a/job.json"


def test_open_storage_interactive_retries_less():
    batch = open_storage("s3://b", endpoint_url="http://127.0.0.1:1", access_key="k", secret_key="s")
    page = open_storage("s3://b", endpoint_url="http://127.0.0.1:1", access_key="k", secret_key="s",
                        interactive=True)
    # botocore counts the first try too: max_attempts=N retries becomes total_max_attempts=N+1
    batch_config, page_config = batch.client.meta.config, page.client.meta.config
    assert (batch_config.retries["total_max_attempts"], batch_config.connect_timeout, batch_config.read_timeout) \
        == (6, 5, 60)
    assert (page_config.retries["total_max_attempts"], page_config.connect_timeout, page_config.read_timeout) \
        == (3, 3, 20)


def test_open_storage_health_probe_has_short_timeouts():
    probe = open_storage("s3://b", endpoint_url="http://127.0.0.1:1", access_key="k", secret_key="s").probe
    assert (probe.meta.config.connect_timeout, probe.meta.config.read_timeout) == (2, 3)


def test_open_storage_health_probe_tries_once():
    probe = open_storage("s3://b", endpoint_url="http://127.0.0.1:1", access_key="k", secret_key="s").probe
    assert probe.meta.config.retries["total_max_attempts"] == 1


def test_s3_storage_refuses_escaping_keys_before_any_request():
    store = open_storage("s3://b/p", endpoint_url="http://127.0.0.1:1", access_key="k", secret_key="s")
    with pytest.raises(ValueError, match="invalid storage key"):
        store._key("../other-prefix/x")


@pytest.mark.parametrize("url", ["ftp://host/x", "s3://", "s3:///prefix", "bucket/path", "", "http://x/y"])
def test_open_storage_refuses_other_urls(url):
    with pytest.raises(ValueError, match="storage URL must be") as info:
        open_storage(url)
    assert repr(url) in str(info.value)


def test_open_storage_refuses_a_file_url_with_a_host(tmp_path):
    with pytest.raises(ValueError, match="file:///absolute/path"):
        open_storage(f"file://relative{tmp_path}/store")


def test_storage_is_abstract():
    with pytest.raises(TypeError):
        Storage()


def test_local_get_head_reads_only_the_start(store):
    store.put("products/a.safetensors", b"0123456789")
    assert store.get_head("products/a.safetensors", 4) == b"0123"
    assert store.get_head("products/a.safetensors", 100) == b"0123456789", "a short file: all of it"
    with pytest.raises(ObjectMissing):
        store.get_head("products/none.safetensors", 4)
