"""A local stand-in for the vast.ai REST API (and for the rented instance's GET /health), and a loader
for docker/vast.py.

It records every request (method, path, Authorization header, JSON body) so tests can assert the
exact requests docker/vast.py and backend/ops/idle.py send. Behaviour is set by plain attributes.

`fleet` is the account as vast's "show instances" (GET /api/v0/instances/) lists it; "manage instance"
(PUT /api/v0/instances/{id}/ with "state" and/or "label") and DELETE change it as vast would (the state
asked becomes intended_status at once; actual_status follows: "stopped", or "loading" on the way up),
and a successful create adds the new instance to it. `fail(method, path)` refuses a request once.
Listens on 127.0.0.1 on a free port; nothing leaves the machine.
"""

import importlib.util
import json
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

LAUNCHER = Path(__file__).resolve().parents[2] / "docker" / "vast.py"


def load_launcher(name: str = "vast"):
    """docker/vast.py as a module (docker/ is not a package: users run it as a script); with `name`, one of the
    modules it imports from its own folder (vast_env, vast_instance), the very one the launcher uses."""
    spec = importlib.util.spec_from_file_location("showroom_vast_launcher", LAUNCHER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # puts docker/ on sys.path, as running it as a script does
    return module if name == "vast" else importlib.import_module(name)


@dataclass
class Seen:
    method: str
    path: str
    auth: str | None
    body: object


class VastStandIn:
    def __init__(self):
        self.seen: list[Seen] = []
        self.offers: list[dict] = []
        self.create_answer: tuple[int, dict] = (200, {"success": True, "new_contract": 4242})
        self.manage_answer: tuple[int, dict] = (200, {"success": True})
        self.instances: list[dict] = []  # answered in order to GET /instances/{id}/; the last one repeats
        self.health: list[dict] = [{"status": "ok"}]  # same, for GET /health
        self.fleet: dict[int, dict] = {}
        self.failures: list[tuple[str, str, int]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v0"

    def running_instance(self, **extra) -> dict:
        """An instance whose port 8000 maps to this server, so its /health is served here."""
        return {"actual_status": "running", "public_ipaddr": "127.0.0.1",
                "ports": {"8000/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(self.port)}]}} | extra

    def add_instance(self, instance_id: int, label: str, intended: str, actual: str | None, **extra) -> dict:
        """An instance of the account, with its settings as vast lists them (secrets included)."""
        self.fleet[instance_id] = {"id": instance_id, "label": label, "intended_status": intended,
                                   "actual_status": actual, "cur_state": intended, "num_gpus": 1,
                                   "dph_total": 0.35, "extra_env": [], "onstart": "", **extra}
        return self.fleet[instance_id]

    def fail(self, method: str, path: str, status: int = 500) -> None:
        """The next `method path` request is refused with `status`, as vast does when it has a bad moment."""
        self.failures.append((method, path, status))

    def requests(self, path_prefix: str = "") -> list[tuple[str, str]]:
        return [(s.method, s.path) for s in self.seen if s.path.startswith(path_prefix)]

    def __enter__(self) -> "VastStandIn":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _answer(self, method: str, path: str, body) -> tuple[int, object]:
        for failure in self.failures:
            if failure[:2] == (method, path):
                self.failures.remove(failure)
                return failure[2], {"success": False, "error": "server_error", "msg": "try again later"}
        if method == "POST" and path == "/api/v0/bundles/":
            return 200, {"offers": self.offers}
        if method == "PUT" and re.fullmatch(r"/api/v0/asks/\d+/", path):
            return self._create(int(path.split("/")[-2]), body)
        if method == "GET" and path == "/api/v0/instances/":
            return 200, {"instances_found": len(self.fleet), "instances": list(self.fleet.values())}
        if match := re.fullmatch(r"/api/v0/instances/(\d+)/", path):
            if method == "GET":
                state = self.instances.pop(0) if len(self.instances) > 1 else (self.instances or [{}])[0]
                return 200, {"instances": state}
            if method in ("PUT", "DELETE"):
                self._manage(method, int(match.group(1)), body or {})
                return self.manage_answer
        if method == "GET" and path == "/health":
            return 200, self.health.pop(0) if len(self.health) > 1 else self.health[0]
        return 404, {"success": False, "error": "not_found", "msg": f"no {method} {path} here"}

    def _create(self, offer_id: int, body: dict) -> tuple[int, dict]:
        status, answer = self.create_answer
        if status < 400 and answer.get("new_contract"):
            offer = next((o for o in self.offers if o.get("id") == offer_id), {})
            self.add_instance(int(answer["new_contract"]), body.get("label"), "running", None,
                              num_gpus=offer.get("num_gpus", 1), dph_total=offer.get("dph_total", 0.0),
                              extra_env=[[k, v] for k, v in body.get("env", {}).items()],
                              onstart=body.get("onstart", ""))
        return status, answer

    def _manage(self, method: str, instance_id: int, body: dict) -> None:
        if self.manage_answer[0] >= 400 or instance_id not in self.fleet:
            return
        if method == "DELETE":
            del self.fleet[instance_id]
            return
        instance = self.fleet[instance_id]
        if "label" in body:
            instance["label"] = body["label"]
        if "state" in body:
            instance["intended_status"] = instance["cur_state"] = body["state"]
            instance["actual_status"] = "stopped" if body["state"] == "stopped" else "loading"

    def _handler(self):
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                standin.seen.append(Seen(self.command, self.path, self.headers.get("Authorization"), body))
                status, answer = standin._answer(self.command, self.path, body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _serve

            def log_message(self, *args):
                pass

        return Handler
