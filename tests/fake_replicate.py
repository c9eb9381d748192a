"""A local stand-in for Replicate's HTTP API, for tests: predictions (create, get, cancel), model
versions, file uploads, and the files it serves (outputs, uploads, stand-in presigned URLs).

It answers on 127.0.0.1 at a free port; point the replicate client at `fake.url` (base_url or
REPLICATE_BASE_URL). Behaviour is set per test through its attributes, and every request is kept
in `fake.requests`. A prediction that succeeds produces a real PNG: its input resized 4x with PIL.
"""

import base64
import email.parser
import email.policy
import io
import json
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image

TERMINAL = ("succeeded", "failed", "canceled")


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: dict | None = None  # the JSON body, when there is one


@dataclass
class FakeReplicate:
    token: str = "r8_fake-token-0123456789abcdef"
    version: str = "a01b0512004918ca55d02e554914a9eca63909fa83a29ff0f115c78a7045574f"
    # --- behaviour ---
    outcome: str = "succeed"  # "succeed", "fail" or "never" (stays processing until canceled)
    polls_to_finish: int = 1  # GETs of a prediction answered "processing" before it finishes
    error_message: str = "CUDA out of memory. Tried to allocate 2.00 GiB"
    throttle_creates: int = 0  # POST /v1/predictions answered 429 this many times first
    lost_create_answers: int = 0  # POST /v1/predictions starts the prediction, then answers 504 (a gateway)
    server_errors_on_poll: int = 0  # GET /v1/predictions/{id} answered 500 this many times first
    unavailable_polls: int = 0  # GET /v1/predictions/{id} answered 503 with Retry-After this many times first
    retry_after: str = "4"  # the Retry-After header of those 503s
    download_chunk_delay_s: float = 0.0  # files are sent in 1 KiB pieces with this pause after each
    create_delay_s: float = 0.0  # POST /v1/predictions holds its answer this long
    output_scale: int = 4
    output_pad: tuple[int, int] = (0, 0)  # extra columns and rows, as a model that pads leaves them
    # --- what happened ---
    requests: list[Recorded] = field(default_factory=list)
    predictions: dict[str, dict] = field(default_factory=dict)
    files: dict[str, tuple[bytes, str]] = field(default_factory=dict)

    def __post_init__(self):
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # --- lifecycle ---
    def start(self) -> "FakeReplicate":
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._server.block_on_close = False  # a request held by create_delay_s must not hold up stop()
        threading.Thread(target=self._server.serve_forever, args=(0.05,), name="fake-replicate", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # --- helpers for tests ---
    def add_file(self, data: bytes, content_type: str = "image/png") -> str:
        """Serve `data` without auth, as a presigned URL would; returns its URL."""
        file_id = uuid.uuid4().hex
        self.files[file_id] = (data, content_type)
        return f"{self.url}/files/{file_id}"

    def requests_to(self, method: str, path_prefix: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == method and r.path.startswith(path_prefix)]

    # --- the API ---
    def handle(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> tuple:
        """(status, JSON body or file bytes), or (status, body, extra response headers)."""
        body = json.loads(raw) if raw and headers.get("content-type", "").startswith("application/json") else None
        with self._lock:
            self.requests.append(Recorded(method, path, headers, body))
        parts = path.strip("/").split("/")
        if parts[0] == "files" and method == "GET" and len(parts) == 2:
            return (200, self.files[parts[1]][0]) if parts[1] in self.files else (404, {"detail": "Not found."})
        if headers.get("authorization") != f"Bearer {self.token}":
            return 401, {"title": "Unauthenticated", "detail": "You did not pass a valid authentication token",
                         "status": 401}
        if method == "POST" and parts == ["v1", "predictions"]:
            return self._create(body or {})
        if method == "GET" and parts[:2] == ["v1", "predictions"] and len(parts) == 3:
            return self._poll(parts[2])
        if method == "POST" and parts[:2] == ["v1", "predictions"] and parts[3:] == ["cancel"]:
            return self._cancel(parts[2])
        if method == "GET" and parts[:2] == ["v1", "models"] and len(parts) == 6 and parts[4] == "versions":
            if parts[5] != self.version:
                return 404, {"detail": "Not found.", "status": 404}
            return 200, {"id": self.version, "created_at": "2022-10-28T23:02:51.627373Z", "cog_version": "0.8.6",
                         "openapi_schema": {}}
        if method == "POST" and parts == ["v1", "files"]:
            return self._upload(headers.get("content-type", ""), raw)
        return 404, {"detail": f"the fake does not serve {method} {path}"}

    def _create(self, body: dict) -> tuple[int, dict]:
        if self.create_delay_s:
            time.sleep(self.create_delay_s)
        with self._lock:
            if self.throttle_creates > 0:
                self.throttle_creates -= 1
                return 429, {"title": "Request was throttled", "detail": "Request was throttled.", "status": 429}
        if body.get("version") != self.version:
            return 422, {"title": "Invalid version", "detail": "Invalid version or not permitted", "status": 422}
        pid = uuid.uuid4().hex[:20]
        self.predictions[pid] = {
            "id": pid, "model": "mv-lab/swin2sr", "version": body["version"], "input": body.get("input"),
            "status": "starting", "output": None, "error": None, "logs": "", "metrics": {}, "polls": 0,
            "created_at": "2025-01-01T00:00:00Z", "started_at": None, "completed_at": None,
            "urls": {"get": f"{self.url}/v1/predictions/{pid}", "cancel": f"{self.url}/v1/predictions/{pid}/cancel"},
        }
        with self._lock:
            if self.lost_create_answers > 0:
                self.lost_create_answers -= 1
                return 504, {"detail": "Gateway Timeout", "status": 504}
        return 201, self._public(pid)

    def _poll(self, pid: str) -> tuple[int, dict]:
        if pid not in self.predictions:
            return 404, {"detail": "Not found.", "status": 404}
        with self._lock:
            if self.server_errors_on_poll > 0:
                self.server_errors_on_poll -= 1
                return 500, {"detail": "Internal server error", "status": 500}
            if self.unavailable_polls > 0:
                self.unavailable_polls -= 1
                return 503, {"detail": "Service Unavailable", "status": 503}, {"Retry-After": self.retry_after}
        prediction = self.predictions[pid]
        if prediction["status"] not in TERMINAL:
            prediction["polls"] += 1
            prediction["status"] = "processing"
            if self.outcome != "never" and prediction["polls"] >= self.polls_to_finish:
                self._finish(prediction)
        return 200, self._public(pid)

    def _finish(self, prediction: dict) -> None:
        prediction["completed_at"] = "2025-01-01T00:00:05Z"
        if self.outcome == "fail":
            prediction["status"], prediction["error"] = "failed", self.error_message
            return
        try:
            source = Image.open(io.BytesIO(self._fetch(prediction["input"]["image"]))).convert("RGB")
        except Exception as exc:  # what Replicate does with an input it cannot read
            prediction["status"], prediction["error"] = "failed", f"cannot read the input image: {exc}"
            return
        size = (source.width * self.output_scale + self.output_pad[0],
                source.height * self.output_scale + self.output_pad[1])
        out = io.BytesIO()
        source.resize(size, Image.Resampling.LANCZOS).save(out, format="PNG")
        prediction["status"], prediction["output"] = "succeeded", self.add_file(out.getvalue())

    def _fetch(self, image: str) -> bytes:
        if image.startswith("data:"):
            return base64.b64decode(image.partition(",")[2])
        prefix = f"{self.url}/files/"
        if image.startswith(prefix):
            return self.files[image.removeprefix(prefix)][0]
        with urllib.request.urlopen(image, timeout=10) as response:
            return response.read()

    def _cancel(self, pid: str) -> tuple[int, dict]:
        if pid not in self.predictions:
            return 404, {"detail": "Not found.", "status": 404}
        if self.predictions[pid]["status"] not in TERMINAL:
            self.predictions[pid]["status"] = "canceled"
        return 200, self._public(pid)

    def _upload(self, content_type: str, raw: bytes) -> tuple[int, dict]:
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {content_type}\r\n\r\n".encode() + raw)
        for part in message.iter_parts():
            if part.get_param("name", header="content-disposition") == "content":
                data = part.get_payload(decode=True)
                url = self.add_file(data, part.get_content_type())
                file_id = url.rsplit("/", 1)[1]
                return 201, {"id": file_id, "name": part.get_filename() or "file", "size": len(data),
                             "content_type": part.get_content_type(), "etag": file_id, "checksums": {},
                             "metadata": {}, "created_at": "2025-01-01T00:00:00Z", "expires_at": None,
                             "urls": {"get": url}}
        return 400, {"detail": "multipart field 'content' is missing"}

    def _public(self, pid: str) -> dict:
        return {k: v for k, v in self.predictions[pid].items() if k != "polls"}


def _handler_for(fake: FakeReplicate) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, payload, *extra = fake.handle(self.command, self.path, headers, raw)
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "image/png" if isinstance(payload, bytes) else "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (extra[0] if extra else {}).items():
                self.send_header(name, value)
            self.end_headers()
            if not (isinstance(payload, bytes) and fake.download_chunk_delay_s):
                self.wfile.write(data)
                return
            try:
                for start in range(0, len(data), 1024):
                    self.wfile.write(data[start:start + 1024])
                    self.wfile.flush()
                    time.sleep(fake.download_chunk_delay_s)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up on a slow download
                self.close_connection = True

        do_GET = do_POST = _serve

        def log_message(self, format, *args) -> None:  # keep test output quiet
            pass

    return Handler
