"""The one client of the backend's HTTP API: explicit timeouts, the bearer key, errors that say what to do."""

import json
import re
import uuid
from urllib.parse import quote

import requests

CONNECT_S = 3.05   # a GPU box that is off should not freeze the page
HEALTH_READ_S = 5
READ_S = 30        # a submission writes the manifest (and the photo) to storage before it answers
UPLOAD_READ_S = 120  # a LoRA upload can be tens of MB
CUTOUT_READ_S = 120  # background removal on a CPU-only backend takes seconds, and loading its model longer


class BackendError(Exception):
    """The backend refused the request; `message` is its own explanation (the contract's `detail`)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.message, self.status = message, status

    @property
    def remover_missing(self) -> bool:
        """The backend cannot cut products out: its background remover (BG_REMOVAL_MODEL) did not open."""
        return self.status == 503 and "background remover" in self.message


class BackendOffline(BackendError):
    """The backend did not answer at all."""


class ShowroomClient:
    def __init__(self, base_url: str, api_key: str | None):
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"

    def __repr__(self) -> str:  # never the key
        return f"ShowroomClient({self.base_url!r})"

    def _call(self, method: str, path: str, read_s: float | None = None, **kwargs) -> dict:
        response = self._send(method, path, read_s, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise BackendError(f"the backend answered {path} with something that is not JSON",
                               response.status_code) from None

    def _send(self, method: str, path: str, read_s: float | None = None, **kwargs) -> requests.Response:
        url = self.base_url + path
        try:
            response = self.session.request(method, url, timeout=(CONNECT_S, read_s or READ_S), **kwargs)
        except requests.Timeout:
            raise BackendOffline(f"the backend at {self.base_url} did not answer in time") from None
        except requests.RequestException:
            raise BackendOffline(f"the backend at {self.base_url} cannot be reached") from None
        if response.status_code >= 400:
            raise BackendError(_detail(response), response.status_code)
        return response

    def health(self) -> dict:
        return self._call("GET", "/health", read_s=HEALTH_READ_S)

    def catalog(self) -> dict:
        return self._call("GET", "/v1/catalog")

    def submit(self, spec: dict, photo: tuple[str, bytes, str] | None = None,
               idempotency_key: str | None = None) -> dict:
        """Queue a job. Sending the same Idempotency-Key again (a retry after a timeout) returns the
        first ticket instead of starting a second job."""
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        if photo is None:
            return self._call("POST", "/v1/jobs", json=spec, headers=headers)
        files = {"spec": (None, json.dumps(spec), "application/json"), "image": photo}
        return self._call("POST", "/v1/jobs", files=files, headers=headers)

    def submit_batch(self, specs: list[dict]) -> dict:
        """Queue 1..50 jobs (no photos) as one batch: all are admitted or none. 202 {"jobs": [JobTicket, ...]};
        BackendError 422 names the refused spec as `jobs[i]`, 429 when the queue cannot take them all."""
        return self._call("POST", "/v1/batches", json={"jobs": specs})

    def cutout(self, photo: tuple[str, bytes, str]) -> bytes:
        """The product cut out of a photo, as a `place` job keeps it: a PNG with transparency, trimmed to
        the product. BackendError with status 422 when the photo holds no product to cut out."""
        response = self._send("POST", "/v1/cutouts", read_s=CUTOUT_READ_S, files={"photo": photo})
        if not response.headers.get("content-type", "").startswith("image/png"):
            raise BackendError("the backend answered /v1/cutouts with something that is not a PNG",
                               response.status_code)
        return response.content

    def cancel(self, job_id: str) -> dict:
        return self._call("POST", f"/v1/jobs/{job_id}/cancel")

    def cancel_training(self, training_id: str) -> dict:
        return self._call("POST", f"/v1/trainings/{training_id}/cancel")

    def upscale(self, job_id: str, index: int) -> dict:
        return self._call("POST", f"/v1/jobs/{job_id}/images/{index}/upscale")

    def delete_job(self, job_id: str) -> None:
        self._send("DELETE", f"/v1/jobs/{job_id}")

    def add_product(self, name: str, trigger: str, category: str | None, weight: float = 1.0,
                    lora: tuple[str, bytes] | None = None, photo: tuple[str, bytes, str] | None = None,
                    photos: list[tuple[str, bytes, str]] | None = None) -> dict:
        """A product from its LoRA, a photo of it (cut out by the backend into its packshot), or both; `photos`:
        the photos it keeps to learn from later (`photos` parts)."""
        data = {"name": name, "trigger": trigger, "weight": str(weight)} | ({"category": category} if category else {})
        files = [("file", (lora[0], lora[1], "application/octet-stream"))] if lora is not None else []
        files += ([("photo", photo)] if photo is not None else []) + [("photos", p) for p in photos or []]
        return self._call("POST", "/v1/products", read_s=UPLOAD_READ_S, data=data, files=files)

    def delete_product(self, name: str) -> None:
        self._send("DELETE", f"/v1/products/{quote(name, safe='')}")

    def train(self, name: str, photos: list[tuple[str, bytes, str]], steps: int | None = None) -> dict:
        """Queue the product's training from its photos: 202 {"id", "status", "manifest_key"}."""
        data = {"steps": str(steps)} if steps else {}
        return self._call("POST", f"/v1/products/{quote(name, safe='')}/training", read_s=UPLOAD_READ_S, data=data,
                          files=[("photos", photo) for photo in photos])


def _megabytes(detail: str) -> str:
    """'the limit of 20971520 bytes' -> 'the limit of 20 MB' (kept on one line): the size a file picker shows."""
    return re.sub(r"\b(\d{7,}) bytes\b", lambda m: f"{int(m[1]) / 2**20:.0f}\u00a0MB", detail)


def _detail(response: requests.Response) -> str:
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, list):  # FastAPI's own validation errors
        detail = "; ".join(str(d.get("msg", d)) if isinstance(d, dict) else str(d) for d in detail)
    if response.status_code == 401:
        return f"the backend refused the API key: set API_KEY to the backend's key ({detail or 'unauthorized'})"
    if response.status_code == 500 or (response.status_code > 500 and not detail):
        # the backend's own words for this ("internal error; the server log has the details") send a shop
        # owner to a log they cannot read: say it is not their doing, and what to do
        return ("the generator ran into an unexpected problem of its own, not caused by what you entered; try "
                "again in a moment, and if it keeps happening, tell whoever runs Showroom (the cause is in the "
                f"generator's log, error {response.status_code})")
    return _megabytes(str(detail or f"the backend answered {response.status_code} {response.reason}"))
