"""The one vast.ai client: the few REST calls Showroom makes, for the launcher (docker/vast.py, on a
laptop), its autoscaler (backend/ops/autoscale.py) and the idle stop (inside an instance). Only the
standard library and `requests`.

Every call is one attempt with a timeout: each caller either polls again or reports and stops.
"""

import json
from collections.abc import Callable

import requests

VAST_API_URL = "https://console.vast.ai/api/v0"


class VastError(Exception):
    """A vast.ai call failed or was refused; the message names the request, never the key."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code  # the launcher's exit code for it


class VastAPI:
    """`redact` scrubs secrets from messages; with `dry_run`, mutating calls are only described to `say`."""

    def __init__(self, key: str, base: str = VAST_API_URL, *, timeout_s: float = 30,
                 redact: Callable[[str], str] = lambda text: text, say: Callable[[str], None] | None = None,
                 dry_run: bool = False, secret_field: Callable[[str], bool] = lambda name: False):
        self.base, self.timeout_s, self.dry_run = base.rstrip("/"), timeout_s, dry_run
        self.redact, self.say, self.secret_field = redact, say, secret_field
        self.session = requests.Session()
        self.session.headers.update({"Authorization": f"Bearer {key}", "Accept": "application/json"})

    def call(self, method: str, path: str, body: dict | None = None, mutating: bool = True):
        url = f"{self.base}{path}"
        if mutating and self.dry_run:
            shown = {k: ({n: "***" if self.secret_field(n) else v for n, v in v.items()} if k == "env" else v)
                     for k, v in (body or {}).items()}
            if self.say:
                self.say(self.redact(f"DRY-RUN {method} {url} {json.dumps(shown, sort_keys=True)}"))
            return None
        try:
            response = self.session.request(method, url, json=body, timeout=self.timeout_s)
        except requests.RequestException as e:
            raise VastError(self.redact(f"{method} {url} failed: {e}")) from None
        try:
            answer = response.json()
        except ValueError:
            answer = {}
        if response.status_code >= 400 or (isinstance(answer, dict) and answer.get("success") is False):
            reason = answer.get("msg") or answer.get("error") if isinstance(answer, dict) else None
            raise VastError(self.redact(f"{method} {url} answered {response.status_code}: "
                                        f"{reason or response.text[:200] or 'no reason given'}"))
        return answer

    def offers(self, query: dict) -> list[dict]:
        return (self.call("POST", "/bundles/", query, mutating=False) or {}).get("offers") or []

    def create(self, offer_id: int, body: dict) -> int | None:
        answer = self.call("PUT", f"/asks/{offer_id}/", body)
        if answer is None:
            return None
        if not answer.get("new_contract"):
            raise VastError(f"vast.ai did not return the new instance's id: {self.redact(json.dumps(answer))}")
        return int(answer["new_contract"])

    def instance(self, instance_id: int) -> dict:
        answer = self.call("GET", f"/instances/{instance_id}/", mutating=False) or {}
        return answer.get("instances") or {}

    def instances(self) -> list[dict]:
        """Every instance of the account (vast's "show instances"): {"instances_found": n, "instances": [...]}.
        Each holds its settings too (extra_env, onstart): never print one whole."""
        answer = self.call("GET", "/instances/", mutating=False) or {}
        return [i for i in answer.get("instances") or [] if isinstance(i, dict)]

    def update(self, instance_id: int | str, fields: dict) -> None:
        """vast's "manage instance": {"state": "running"|"stopped"} and/or {"label": str}, in one request."""
        self.call("PUT", f"/instances/{instance_id}/", fields)

    def set_state(self, instance_id: int | str, state: str) -> None:
        self.update(instance_id, {"state": state})

    def destroy(self, instance_id: int) -> None:
        self.call("DELETE", f"/instances/{instance_id}/")
