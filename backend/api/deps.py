"""What routes depend on, as Annotated aliases: the services, and who the caller is."""

import hashlib
import hmac
import ipaddress
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from backend.config import Settings
from backend.errors import Forbidden, RateLimited, Unauthorized
from backend.gpu.executor import Executor
from backend.jobs.manifests import ManifestStore
from backend.jobs.prepare import Preparer
from backend.jobs.service import JobService
from backend.ops.metrics import Metrics
from backend.ops.ratelimit import RateLimiter
from backend.products.catalog import Catalog
from backend.products.training import TrainingService
from backend.storage import Storage


@dataclass
class Services:
    settings: Settings
    storage: Storage
    catalog: Catalog
    executor: Executor
    store: ManifestStore
    jobs: JobService
    metrics: Metrics
    limiter: RateLimiter
    upscales: object = None
    preparer: Preparer | None = None
    trainings: TrainingService | None = None


def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


def _is_loopback(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False  # a name, not an address: not provably this machine
    return (getattr(ip, "ipv4_mapped", None) or ip).is_loopback  # a dual-stack server sees ::ffff:127.0.0.1


def _loopback_name(name: str) -> bool:
    name = name.lower().rstrip(".")
    return name == "localhost" or name.endswith(".localhost") or _is_loopback(name.strip("[]"))


def _host_name(host_header: str) -> str:
    """`127.0.0.1:8000` -> `127.0.0.1`, `[::1]:8000` -> `::1`, `localhost` -> `localhost`."""
    if host_header.startswith("["):
        return host_header[1:host_header.find("]")]
    return host_header.rpartition(":")[0] if ":" in host_header else host_header


def _from_elsewhere(headers) -> str | None:
    """Why a request that reached us over loopback was still sent on behalf of another site, or None. A
    web page in the owner's browser can send simple requests to 127.0.0.1 (no CORS preflight for a form
    POST), and by DNS rebinding read the answers under its own name: such requests name a foreign Host,
    Origin or Sec-Fetch-Site; a program on this machine (the frontend, curl) names none."""
    if headers is None:
        return None
    host = headers.get("host")
    if host and not _loopback_name(_host_name(host)):
        return f"the request names host {host[:100]!r}, not this machine"
    origin = headers.get("origin")
    if origin is not None and not _loopback_name(urlsplit(origin).hostname or ""):
        return f"the request comes from the web page {origin[:100]!r}"
    if headers.get("sec-fetch-site") == "cross-site":
        return "the request comes from another web site"
    return None


def authorize(api_key: SecretStr | None, authorization: str | None, host: str, headers=None) -> str:
    """The caller's identity, or Unauthorized/Forbidden: the one place the API key is checked (by the
    AuthGate middleware before any body is read, and again by routes that need the identity). Without
    API_KEY only programs on this machine are answered: the client's address is loopback, and `headers`
    (Host, Origin, Sec-Fetch-Site) do not say a web page elsewhere sent it."""
    if api_key is None:
        if not _is_loopback(host):
            raise Forbidden("API_KEY is not set on the backend, so /v1 answers only local clients; "
                            "set API_KEY on the backend and send it as 'Authorization: Bearer <API_KEY>'")
        if reason := _from_elsewhere(headers):
            raise Forbidden(f"API_KEY is not set on the backend, so /v1 answers only programs on its machine, "
                            f"and {reason}; set API_KEY and send it as 'Authorization: Bearer <API_KEY>'")
        return f"local:{host}"
    scheme, _, token = (authorization or "").partition(" ")
    secret = api_key.get_secret_value().encode()
    # compare_digest takes the same time wherever the first wrong byte is: no timing oracle
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), secret):
        raise Unauthorized("missing or wrong API key: send 'Authorization: Bearer <API_KEY>'",
                           headers={"WWW-Authenticate": "Bearer"})
    return "key:" + hashlib.sha256(secret).hexdigest()[:16]


def client_host(request: Request) -> str:
    return request.client.host if request.client else ""


# Documents the key in the OpenAPI document (a bearer scheme on every /v1 operation); it refuses nothing
# itself: authorize() does, with the contract's messages.
BEARER = HTTPBearer(auto_error=False, scheme_name="ApiKey",
                    description="API_KEY, as `Authorization: Bearer <API_KEY>`; without API_KEY on the backend, "
                                "only clients on its machine are answered")


def require_client(request: Request, services: ServicesDep,
                   _: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)]) -> str:
    """The caller's identity for idempotency; refuses callers without the key."""
    return authorize(services.settings.api_key, request.headers.get("authorization"), client_host(request),
                     request.headers)


ClientDep = Annotated[str, Depends(require_client)]


def rate_limited(request: Request, services: ServicesDep, client: ClientDep) -> str:
    # Per key and address together: one shared key used by many shops does not throttle them all at once.
    wait = services.limiter.allow(f"{client}|{client_host(request)}")
    if wait:
        services.metrics.refused.labels("rate_limit").inc()
        raise RateLimited(f"too many submissions; the limit is {services.settings.rate_limit_per_minute} a "
                          f"minute, try again in {wait:.0f} s", headers={"Retry-After": str(max(1, round(wait)))})
    return client


RateLimitedClientDep = Annotated[str, Depends(rate_limited)]
