"""Object storage: one interface, two implementations chosen by STORAGE_URL.

`s3://bucket[/prefix]` goes through boto3 (AWS or any S3-compatible endpoint), `file:///path` to a
local directory. Every write is whole: a reader sees the old object or the new one, never a part.
Only boto3 and the standard library are imported here, so the frontend can use it too.
"""

import contextlib
import copy
import fcntl
import functools
import os
import shutil
import tempfile
import time
from abc import ABC, abstractmethod
from pathlib import Path
from urllib.parse import urlparse

QUICK_READ_S = 4  # how long a call someone waits on waits for S3's answer (responsive()): 2 tries fit in 10 s


class StorageError(Exception):
    """Storage could not be reached or refused the request (after boto3's retries)."""

    def __init__(self, message: str = "", code: str = ""):
        super().__init__(message)
        self.code = code  # S3's error code, where there is one


class WriteConflict(Exception):
    """A conditional write lost: the object is not (or no longer) as the writer last saw it."""


class ObjectMissing(StorageError):
    """No object at that key."""


def check_key(key: str) -> str:
    """Keys are built by us, but refuse anything that could leave the storage root all the same."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in key or "\x00" in key:
        raise ValueError(f"invalid storage key {key!r}")
    return key


class Storage(ABC):
    url: str

    @abstractmethod
    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None: ...

    @abstractmethod
    def get(self, key: str) -> bytes: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    def get_head(self, key: str, length: int) -> bytes:
        """The first `length` bytes of an object (all of it when shorter): a file's header without its body."""
        return self.get(key)[:length]

    @abstractmethod
    def delete(self, key: str) -> None: ...

    def delete_prefix(self, prefix: str) -> int:
        """Remove every object under `prefix` (a folder such as jobs/<id>/); the number removed."""
        keys = self.list_files(prefix)
        for key in keys:
            self.delete(key)
        return len(keys)

    @abstractmethod
    def version(self, key: str) -> str:
        """A string that changes whenever the object at `key` is replaced (raises ObjectMissing)."""

    @abstractmethod
    def get_versioned(self, key: str) -> tuple[bytes, str]:
        """The object and its version tag, for a later `put_if` (raises ObjectMissing)."""

    @abstractmethod
    def put_if(self, key: str, data: bytes, version: str | None, content_type: str = "text/plain") -> None:
        """Write only if the object is still at `version` (None: only if there is none); else WriteConflict.
        Two writers racing on one key: exactly one wins."""

    @abstractmethod
    def list_dirs(self, prefix: str) -> list[str]:
        """Names of the immediate sub-folders of `prefix` (e.g. job ids under `jobs/`)."""

    @abstractmethod
    def list_files(self, prefix: str) -> list[str]:
        """Keys of the objects directly under `prefix`."""

    def list_page(self, prefix: str, limit: int, start_after: str | None = None) -> list[str]:
        """At most `limit` keys directly under `prefix`, in ascending order, after `start_after` (a key).
        One request on S3 whatever the folder holds: what an index of a million jobs is read with."""
        keys = [k for k in self.list_files(prefix) if start_after is None or k > start_after]
        return keys[:limit]

    def presigned_url(self, key: str, ttl_s: int) -> str | None:
        """A short-lived URL a browser or a remote service can fetch, where the store supports it."""
        return None

    def ping(self) -> None:
        """Raise StorageError if the store cannot be reached."""
        self.list_dirs("jobs/")

    def responsive(self) -> "Storage":
        """The same store for calls someone is waiting on (an HTTP request, the manifest writer, which
        retries on its own): a hung store fails them in seconds rather than after minutes of retries."""
        return self


def _disk_errors(method):
    """A full disk or a permission problem is a storage fault like an S3 outage (StorageError), handled
    and retried as one; a missing object stays ObjectMissing."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except StorageError:
            raise
        except OSError as e:
            raise StorageError(f"local storage: {e.strerror or e} ({type(e).__name__})") from None
    return wrapper


class LocalStorage(Storage):
    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.url = f"file://{self.root}"

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    @_disk_errors
    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)  # atomic: readers never see a partial file
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @_disk_errors
    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise ObjectMissing(key) from None

    @_disk_errors
    def get_head(self, key: str, length: int) -> bytes:
        try:
            with self._path(key).open("rb") as f:
                return f.read(length)
        except FileNotFoundError:
            raise ObjectMissing(key) from None

    @_disk_errors
    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    @_disk_errors
    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    @_disk_errors
    def delete_prefix(self, prefix: str) -> int:
        folder = self._path(prefix.strip("/"))
        removed = sum(1 for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0
        shutil.rmtree(folder, ignore_errors=True)
        return removed

    @_disk_errors
    def version(self, key: str) -> str:
        try:
            stat = self._path(key).stat()
        except FileNotFoundError:
            raise ObjectMissing(key) from None
        # put() renames a fresh file into place: the inode tells a same-size rewrite within one clock tick
        return f"{stat.st_mtime_ns}-{stat.st_size}-{stat.st_ino}"

    @_disk_errors
    def get_versioned(self, key: str) -> tuple[bytes, str]:
        with self._exclusive():
            return self.get(key), self.version(key)

    @_disk_errors
    def put_if(self, key: str, data: bytes, version: str | None, content_type: str = "text/plain") -> None:
        with self._exclusive():  # compare and swap, against every process on this machine
            try:
                current = self.version(key)
            except ObjectMissing:
                current = None
            if current != version:
                raise WriteConflict(key)
            self.put(key, data, content_type)

    @contextlib.contextmanager
    def _exclusive(self):
        with open(self.root / ".lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _folder(self, prefix: str) -> Path:
        return self._path(prefix.strip("/")) if prefix.strip("/") else self.root

    @_disk_errors
    def list_dirs(self, prefix: str) -> list[str]:
        folder = self._folder(prefix)
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if p.is_dir())

    @_disk_errors
    def list_files(self, prefix: str) -> list[str]:
        folder = self._folder(prefix)
        if not folder.is_dir():
            return []
        base = prefix.strip("/") + "/" if prefix.strip("/") else ""
        return sorted(base + p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith(".tmp-"))


class S3Storage(Storage):
    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None,
                 access_key: str | None = None, secret_key: str | None = None, region: str | None = None,
                 interactive: bool = False):
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")
        # boto3's standard retry mode backs off on throttling, 5xx and connection errors: storage
        # hiccups are common on cheap boxes and every write here is idempotent, so retrying pays.
        # A page someone is looking at (`interactive`) gives up sooner: it polls again in a second anyway.
        attempts, connect_s, read_s = (2, 3, 20) if interactive else (5, 5, 60)
        config = Config(retries={"max_attempts": attempts, "mode": "standard"}, connect_timeout=connect_s,
                        read_timeout=read_s, signature_version="s3v4", s3={"addressing_style": "path"})
        args = dict(endpoint_url=endpoint_url, aws_access_key_id=access_key, aws_secret_access_key=secret_key,
                    region_name=region or "us-east-1")
        self.client = boto3.client("s3", config=config, **args)
        # /health must answer fast during an outage: its probe tries once, with short timeouts.
        self.probe = boto3.client("s3", config=config.merge(Config(retries={"total_max_attempts": 1}, connect_timeout=2,
                                                                     read_timeout=3)), **args)
        # A server that accepts connections and never answers (stopped, overloaded) is only noticed by the read
        # time-out: calls someone waits on try twice and give up after seconds, not minutes (see responsive()).
        self.quick = boto3.client("s3", config=config.merge(Config(retries={"total_max_attempts": 2}, connect_timeout=2,
                                                                     read_timeout=QUICK_READ_S)), **args)

    def responsive(self) -> "S3Storage":
        view = copy.copy(self)
        view.client = self.quick
        return view

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _call(self, method, **kwargs):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return method(Bucket=self.bucket, **kwargs)
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound"):
                raise ObjectMissing(kwargs.get("Key", "")) from None
            raise StorageError(f"S3 {code or 'error'}: {e.response.get('Error', {}).get('Message', '')}",
                               code) from None
        except BotoCoreError as e:
            raise StorageError(f"S3 unreachable: {e}") from None

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self._call(self.client.put_object, Key=self._key(key), Body=data, ContentType=content_type)

    def get(self, key: str) -> bytes:
        return self._call(self.client.get_object, Key=self._key(key))["Body"].read()

    def get_head(self, key: str, length: int) -> bytes:
        if length < 1:
            return b""
        answer = self._call(self.client.get_object, Key=self._key(key), Range=f"bytes=0-{length - 1}")
        return answer["Body"].read()[:length]  # a server that ignores Range sends the whole object

    def exists(self, key: str) -> bool:
        try:
            self._call(self.client.head_object, Key=self._key(key))
            return True
        except ObjectMissing:
            return False

    def delete(self, key: str) -> None:
        self._call(self.client.delete_object, Key=self._key(key))

    def version(self, key: str) -> str:
        return self._call(self.client.head_object, Key=self._key(key))["ETag"].strip('"')

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        answer = self._call(self.client.get_object, Key=self._key(key))
        return answer["Body"].read(), answer["ETag"]

    def put_if(self, key: str, data: bytes, version: str | None, content_type: str = "text/plain") -> None:
        """S3's conditional writes (If-None-Match: * / If-Match: <etag>): AWS S3 since 2024, SeaweedFS, MinIO."""
        condition = {"IfNoneMatch": "*"} if version is None else {"IfMatch": version}
        try:
            self._call(self.client.put_object, Key=self._key(key), Body=data, ContentType=content_type, **condition)
        except StorageError as e:
            if e.code in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise WriteConflict(key) from None
            raise

    def _list(self, prefix: str):
        full = self.prefix + prefix.strip("/") + "/" if prefix.strip("/") else self.prefix
        token = None
        while True:
            kwargs = {"Prefix": full, "Delimiter": "/"} | ({"ContinuationToken": token} if token else {})
            page = self._call(self.client.list_objects_v2, **kwargs)
            yield full, page
            if not page.get("IsTruncated"):
                return
            token = page["NextContinuationToken"]

    def list_dirs(self, prefix: str) -> list[str]:
        names = []
        for full, page in self._list(prefix):
            names += [p["Prefix"][len(full):].rstrip("/") for p in page.get("CommonPrefixes", [])]
        return sorted(names)

    def _objects(self, page: dict) -> list[str]:
        """The keys of a listing's objects. SeaweedFS lists a folder whose last object was deleted as a key
        of its own ("index/unfinished/"): a folder, not an object (start-up recovery read it as a job with an
        empty id, every 10 s)."""
        return [o["Key"][len(self.prefix):] for o in page.get("Contents", []) if not o["Key"].endswith("/")]

    def list_files(self, prefix: str) -> list[str]:
        keys = []
        for _, page in self._list(prefix):
            keys += self._objects(page)
        return sorted(keys)

    def list_page(self, prefix: str, limit: int, start_after: str | None = None) -> list[str]:
        full = self.prefix + prefix.strip("/") + "/"
        kwargs = {"Prefix": full, "Delimiter": "/", "MaxKeys": limit}
        if start_after:
            kwargs["StartAfter"] = self._key(start_after)
        page = self._call(self.client.list_objects_v2, **kwargs)
        return self._objects(page)[:limit]

    def delete_prefix(self, prefix: str) -> int:
        """Every object under the prefix, including the folder markers some S3 stores (SeaweedFS) keep."""
        check_key(prefix.strip("/"))
        full, removed, token = self.prefix + prefix.strip("/") + "/", 0, None
        while True:
            kwargs = {"Prefix": full} | ({"ContinuationToken": token} if token else {})
            page = self._call(self.client.list_objects_v2, **kwargs)
            for item in page.get("Contents", []):
                self._call(self.client.delete_object, Key=item["Key"])
                removed += 1
            if not page.get("IsTruncated"):
                break
            token = page["NextContinuationToken"]
        try:
            self._call(self.client.delete_object, Key=full)  # the folder's own marker, where the store keeps one
        except StorageError:
            pass
        return removed

    def ping(self) -> None:
        self._call(self.probe.list_objects_v2, Prefix=self.prefix + "jobs/", MaxKeys=1)

    def presigned_url(self, key: str, ttl_s: int) -> str | None:
        return self.client.generate_presigned_url("get_object", ExpiresIn=ttl_s,
                                                  Params={"Bucket": self.bucket, "Key": self._key(key)})


def put_retrying(storage: Storage, key: str, data: bytes, content_type: str, budget_s: float,
                 sleep=time.sleep) -> None:
    """Write, retrying with exponential backoff for up to `budget_s`: an image that took a GPU a
    second to make is worth waiting for through a storage restart. Raises the last StorageError."""
    deadline, delay = time.monotonic() + budget_s, 0.5
    while True:
        try:
            return storage.put(key, data, content_type)
        except StorageError:
            if time.monotonic() + delay > deadline:
                raise
            sleep(delay)
            delay = min(delay * 2, 8.0)


def open_storage(url: str, *, endpoint_url: str | None = None, access_key: str | None = None,
                 secret_key: str | None = None, region: str | None = None, interactive: bool = False) -> Storage:
    parsed = urlparse(url)
    if parsed.scheme == "file" and not parsed.netloc and parsed.path.startswith("/"):
        return LocalStorage(Path(parsed.path))
    if parsed.scheme == "s3" and parsed.netloc:
        return S3Storage(parsed.netloc, parsed.path, endpoint_url=endpoint_url, access_key=access_key,
                         secret_key=secret_key, region=region, interactive=interactive)
    raise ValueError(f"storage URL must be s3://bucket[/prefix] or file:///absolute/path, got {url!r}")
