"""Replicate's hosted mv-lab/swin2sr as a 4x upscaler: one prediction per image, every wait bounded by
the upscale's deadline, the prediction canceled (so it stops costing money) when the deadline passes."""

import base64
import io
import logging
import math
import re
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import httpx
import replicate
from replicate.exceptions import ReplicateError
from replicate.version import Versions

from backend.config import REPLICATE_MODEL
from backend.upscale.common import UpscaleError, fit_4x, image_size

log = logging.getLogger("showroom.upscale")
T = TypeVar("T")

# Pinned so that the output (and the price) stays what we tested until we choose to move: a model
# owner can push a new version at any time. Input: `image` (a URI) and `task`.
REPLICATE_VERSION = "a01b0512004918ca55d02e554914a9eca63909fa83a29ff0f115c78a7045574f"
DATA_URI_MAX_BYTES = 1 << 20  # Replicate recommends data URIs only under 1 MB; larger inputs are uploaded
MAX_OUTPUT_BYTES = 512 << 20
CANCEL_TIMEOUT_S = 5.0  # granted past the deadline to cancel a prediction, which stops it costing money


def _status_of(exc: Exception) -> int | None:
    if isinstance(exc, ReplicateError):
        return exc.status
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code
    return None


def _describe(exc: Exception) -> str:
    if isinstance(exc, ReplicateError):
        return f"{exc.status} {exc.detail or exc.title or 'with no detail'}"
    if isinstance(exc, httpx.HTTPStatusError):
        return f"{exc.response.status_code} {exc.response.reason_phrase}"
    if isinstance(exc, DeadlinePassed):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


class DeadlinePassed(httpx.TimeoutException):
    """A request that would end past its upscale's deadline, refused before it waits."""


class _DeadlineTransport(httpx.BaseTransport):
    """The transport under the replicate client's own retry layer (replicate.client.RetryTransport),
    which retries GETs answered 429/503/504 up to 10 times and sleeps whatever Retry-After says,
    uncapped. This keeps all of that inside the deadline `time_left` reports: each attempt's
    timeouts (some of which the client leaves unset, meaning forever) are capped at the time left,
    no attempt starts past the deadline, and an answer asking for a wait the time left cannot cover
    ends the request at once instead of sleeping."""

    RETRIED_STATUSES = frozenset({429, 503, 504})  # as RetryTransport's, for the methods below
    RETRIED_METHODS = frozenset({"HEAD", "GET", "PUT", "DELETE", "OPTIONS", "TRACE"})

    def __init__(self, time_left: Callable[[], float], bound: httpx.Timeout):
        self._inner = httpx.HTTPTransport()
        self._time_left, self._bound = time_left, bound.as_dict()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        left = self._time_left()
        if left <= 0:
            raise DeadlinePassed("the time limit was reached before this request", request=request)
        timeouts = request.extensions.get("timeout") or {}
        request.extensions["timeout"] = {k: min(v if timeouts.get(k) is None else timeouts[k], left)
                                         for k, v in self._bound.items()}
        response = self._inner.handle_request(request)
        if response.status_code in self.RETRIED_STATUSES and request.method in self.RETRIED_METHODS:
            asked = response.headers.get("Retry-After", "").strip()
            wait = math.ceil(float(asked)) if re.fullmatch(r"\d+(\.\d+)?", asked) else 1  # whole seconds
            left = self._time_left()
            if wait >= left:
                response.close()
                raise DeadlinePassed(f"Replicate answered {response.status_code} and asked to wait {wait} s, "
                                     f"more than the {max(left, 0):.1f} s left", request=request)
            response.headers["Retry-After"] = str(wait)  # RetryTransport sleeps exactly this
        return response

    def close(self) -> None:
        self._inner.close()


class ReplicateUpscaler:
    """mv-lab/swin2sr on Replicate, through the replicate client. Every wait is bounded: the whole
    upscale (upload, prediction, retries, download) by `timeout_s`, after which the prediction is
    canceled within CANCEL_TIMEOUT_S more. One instance serves several threads at once."""

    name = "replicate"

    def __init__(self, api_token: str, base_url: str | None = None, model: str = REPLICATE_MODEL,
                 version: str = REPLICATE_VERSION, task: str = "real_sr", timeout_s: float = 300,
                 poll_interval_s: float = 1.0, max_retries: int = 4, retry_backoff_s: float = 1.0,
                 data_uri_max_bytes: int = DATA_URI_MAX_BYTES):
        if not api_token:
            raise ValueError("the Replicate upscaler needs an API token: set REPLICATE_API_TOKEN")
        if not re.fullmatch(r"[0-9a-f]{64}", version):
            raise ValueError(f"a Replicate version id is 64 hex digits, got {version!r}")
        if timeout_s <= 0 or poll_interval_s <= 0 or max_retries < 0 or retry_backoff_s < 0:
            raise ValueError(f"timeout_s and poll_interval_s must be > 0, max_retries and retry_backoff_s >= 0; got "
                             f"{timeout_s}, {poll_interval_s}, {max_retries}, {retry_backoff_s}")
        self.model, self.version, self.task = model, version, task
        self.timeout_s, self.poll_interval_s = timeout_s, poll_interval_s
        self.max_retries, self.retry_backoff_s = max_retries, retry_backoff_s
        self.data_uri_max_bytes = data_uri_max_bytes
        self._token = api_token
        self._local = threading.local()  # this thread's deadline, read by the transport
        # base_url=None lets the client use REPLICATE_BASE_URL, else https://api.replicate.com. The
        # client itself retries GETs answered 429/503/504 (up to 10 times, honouring Retry-After, kept
        # within our deadline by _DeadlineTransport) before _call sees them; _call adds retries for
        # create, other 5xx and lost connections.
        request_timeout = httpx.Timeout(min(30.0, timeout_s), connect=min(10.0, timeout_s))
        self._client = replicate.Client(api_token=api_token, base_url=base_url or None, timeout=request_timeout,
                                        transport=_DeadlineTransport(self._time_left, request_timeout))

    def _time_left(self) -> float:
        deadline = getattr(self._local, "deadline", None)  # set by _call and _cancel before every request
        return self.timeout_s if deadline is None else deadline - time.monotonic()

    def check(self) -> None:
        """Raise UpscaleError unless Replicate accepts the token and knows the pinned version."""
        self._guarded(lambda: self._call(lambda: Versions(self._client, self.model).get(self.version),
                                         f"look up {self.model} version {self.version}",
                                         time.monotonic() + self.timeout_s))

    def upscale(self, png: bytes, source_url: str | None = None) -> bytes:
        return self._guarded(lambda: self._upscale(png, source_url))

    def _guarded(self, work: Callable[[], T]) -> T:
        try:
            return work()
        except UpscaleError as exc:  # last line of defence: the token never reaches a manifest or a log
            if self._token in str(exc):
                raise UpscaleError(str(exc).replace(self._token, "***")) from None
            raise

    def _upscale(self, png: bytes, source_url: str | None) -> bytes:
        image_size(png, "the source image")
        deadline = time.monotonic() + self.timeout_s
        image = source_url or self._image_input(png, deadline)
        inputs = {"image": image, "task": self.task}
        prediction = self._call(lambda: self._client.predictions.create(version=self.version, input=inputs),
                                f"start {self.model}", deadline, idempotent=False)
        log.info("replicate prediction %s started (%s, task %s)", prediction.id, self.model, self.task)
        prediction = self._wait(prediction, deadline)
        result = self._download(prediction.output, deadline)
        return fit_4x(png, result, f"{self.model}'s output")

    def _image_input(self, png: bytes, deadline: float) -> str:
        if len(png) <= self.data_uri_max_bytes:
            return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        return self._call(lambda: self._client.files.create(io.BytesIO(png), filename="source.png",
                                                            content_type="image/png").urls["get"],
                          "upload the source image", deadline)

    def _wait(self, prediction, deadline: float):
        pid = prediction.id
        try:
            while prediction.status not in ("succeeded", "failed", "canceled"):
                if time.monotonic() + self.poll_interval_s > deadline:
                    raise UpscaleError(f"Replicate prediction {pid} timed out after {self.timeout_s:g} s "
                                       f"(status {prediction.status}); it was canceled")
                time.sleep(self.poll_interval_s)
                prediction = self._call(lambda: self._client.predictions.get(pid), "poll the prediction", deadline)
        except UpscaleError:
            self._cancel(pid)  # a prediction we stop waiting for should stop costing money
            raise
        if prediction.status == "failed":
            raise UpscaleError(f"{self.model} failed on Replicate: {prediction.error or 'no error message given'}")
        if prediction.status == "canceled":
            raise UpscaleError(f"Replicate prediction {pid} was canceled before it finished")
        return prediction

    def _cancel(self, pid: str) -> None:
        self._local.deadline = time.monotonic() + CANCEL_TIMEOUT_S  # past the upscale's own: worth a moment
        try:
            self._client.predictions.cancel(pid)
        except Exception as exc:  # best effort: the error being raised already says what went wrong
            log.warning("could not cancel replicate prediction %s: %s", pid, _describe(exc))

    def _download(self, output, deadline: float) -> bytes:
        if isinstance(output, list) and output:
            output = output[-1]
        if not isinstance(output, str) or not output.startswith(("https://", "http://", "data:")):
            raise UpscaleError(f"{self.model} returned no image URL (output: {str(output)[:200]})")
        if output.startswith("data:"):
            return base64.b64decode(output.partition(",")[2])

        def fetch() -> bytes:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeadlinePassed("the time limit was reached before the download")
            # No Authorization header: the output lives on Replicate's delivery host, not the API.
            timeout = httpx.Timeout(min(60.0, left), connect=min(10.0, left))
            with httpx.stream("GET", output, timeout=timeout, follow_redirects=True) as r:
                r.raise_for_status()
                chunks, size = [], 0
                for chunk in r.iter_bytes():  # the timeout bounds each read; this, the whole download
                    size += len(chunk)
                    if time.monotonic() > deadline:
                        raise UpscaleError(f"{self.model}'s output was still downloading ({size} bytes) when the "
                                           f"upscale's {self.timeout_s:g} s limit ran out")
                    if size > MAX_OUTPUT_BYTES:
                        raise UpscaleError(f"{self.model}'s output is larger than {MAX_OUTPUT_BYTES >> 20} MiB")
                    chunks.append(chunk)
                return b"".join(chunks)

        return self._call(fetch, "download the result", deadline)

    def _call(self, request: Callable[[], T], what: str, deadline: float, idempotent: bool = True) -> T:
        """One request, retried with exponential backoff on 429 (rate limited: Replicate asks us to
        slow down) and 5xx (its side, usually brief): a blip should not fail an image someone chose.
        A 4xx is our mistake and fails at once. A request that may have reached Replicate is only
        retried if repeating it is harmless, so a lost answer never starts a second paid prediction:
        one that is not (`idempotent=False`, a create) is retried only on 429 and 503, which say it was
        not taken; a 500, 502 or 504 may come from a gateway after Replicate started it.
        Never sleeps past `deadline`, nor lets the client's own retries run past it."""
        for attempt in range(self.max_retries + 1):
            self._local.deadline = deadline
            try:
                return request()
            except (ReplicateError, httpx.HTTPError) as exc:
                status = _status_of(exc)
                if isinstance(exc, DeadlinePassed):
                    retryable = False
                elif status is not None:
                    retryable = status in (429, 503) or (status >= 500 and idempotent)
                else:  # no answer: retry if the request never left, or if sending it twice is harmless
                    retryable = idempotent or isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))
                hint = " (check REPLICATE_API_TOKEN)" if status in (401, 403) else ""
                failure = UpscaleError(f"Replicate could not {what}: {_describe(exc)}{hint}")
                delay = self.retry_backoff_s * 2 ** attempt
                if isinstance(exc, DeadlinePassed) or (retryable and attempt < self.max_retries
                                                       and time.monotonic() + delay > deadline):
                    raise UpscaleError(f"{failure}; gave up at the upscale's {self.timeout_s:g} s limit") from exc
                if not retryable or attempt == self.max_retries:
                    raise failure from exc
                log.warning("replicate: %s, retrying in %.1f s (attempt %d of %d)", failure, delay, attempt + 1,
                            self.max_retries)
                time.sleep(delay)
        raise AssertionError("unreachable")

