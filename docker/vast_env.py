"""The rented box's settings and the secrets around them, for docker/vast.py (which puts this folder on the
path: docker/ is not a package).

The env file (NAME=value lines, as compose's .env reads them), the names passed through from this shell, the
checks a backend's settings (an API key, an s3:// bucket) and a GPU node's (a broker with a password that the box
can reach) must pass, which names hold secrets and the redaction of their values in everything printed, and the
vast.ai key itself. The launcher's one error and its exit codes are here too, at the bottom of its imports.
"""

import uuid
from pathlib import Path
from urllib.parse import urlparse

from backend.ops.vast import VastAPI, VastError

KEY_FILE = Path("~/.config/vastai/vast_api_key").expanduser()
SECRET_MARKERS = ("KEY", "SECRET", "TOKEN", "PASSWORD", "BROKER_URL")  # BROKER_URL holds Redis's password
# Backend settings taken from this shell when the env file does not set them (CONTRACT.md + ours).
PASS_THROUGH = ("MODEL_ID", "DEVICE", "WORKERS", "STORAGE_URL", "S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "API_KEY", "UPSCALER", "REPLICATE_API_TOKEN",
                "REPLICATE_BASE_URL", "IDLE_STOP_MINUTES", "HF_TOKEN", "EXECUTOR", "BROKER_URL", "BG_REMOVAL_MODEL",
                "WEBHOOK_SECRET", "WEBHOOK_ALLOWED_HOSTS", "IMAGE_TIMEOUT_S")
NODE_DROPS = ("API_KEY", "PUBLIC_BIND", "IDLE_STOP_MINUTES", "UPSCALER", "REPLICATE_API_TOKEN", "EXECUTOR",
              "WEBHOOK_SECRET", "WEBHOOK_ALLOWED_HOSTS")  # the backend's alone: a node never sends a webhook
EXIT_API, EXIT_CONFIG, EXIT_NO_OFFER, EXIT_CREATE, EXIT_UNHEALTHY = 1, 2, 3, 4, 5

LaunchError = VastError  # one error for the API's refusals and the launcher's own (its code is the exit code)


def is_secret(name: str) -> bool:
    return any(marker in name.upper() for marker in SECRET_MARKERS)


class Redactor:
    """Replaces every known secret value in text about to be printed."""

    def __init__(self):
        self.values: set[str] = set()

    def add(self, value: str | None) -> None:
        if value and len(value) >= 4:
            self.values.add(value)

    def __call__(self, text: str) -> str:
        for value in sorted(self.values, key=len, reverse=True):
            text = text.replace(value, "***")
        return text


def hide_secrets(api: VastAPI, env: dict[str, str]) -> None:
    for name, value in env.items():
        if is_secret(name) and value:
            api.redact.add(value)


def api_key(environ) -> str:
    key = (environ.get("VAST_API_KEY") or "").strip()
    if not key and KEY_FILE.is_file():
        key = KEY_FILE.read_text().strip()
    if not key:
        raise LaunchError(f"no vast.ai API key: set VAST_API_KEY or write it to {KEY_FILE} "
                          "(https://cloud.vast.ai/manage-keys/)", EXIT_CONFIG)
    return key


def backend_api_key(args, environ) -> str | None:
    """The backend's API_KEY, for its /health: from the env file, else this shell. Never sent to a node."""
    return (read_env_file(args.env_file) if args.env_file else {}).get("API_KEY") or environ.get("API_KEY")


def read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.removeprefix("export ").partition("=")
        if not sep or not name.strip().isidentifier():
            raise LaunchError(f"{path}:{number}: expected NAME=value", EXIT_CONFIG)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:  # an unquoted value ends where a comment starts, as in compose's .env
            value = value.split(" #", 1)[0].rstrip()
        env[name.strip()] = value
    return env


def instance_env(env_file: Path | None, environ: dict[str, str], role: str = "backend",
                 node_name: str | None = None) -> dict[str, str]:
    """The instance's settings: the env file first, then PASS_THROUGH names from this shell."""
    env = read_env_file(env_file) if env_file else {}
    for name in PASS_THROUGH:
        if name not in env and environ.get(name):
            env[name] = environ[name]
    if role == "node":
        return node_env(env, node_name)
    if not env.get("API_KEY"):
        raise LaunchError("set API_KEY (env file or environment): the backend is reachable from the internet, "
                          "and without a key anyone could spend your GPU", EXIT_CONFIG)
    if not env.get("STORAGE_URL", "").startswith("s3://"):
        raise LaunchError("set STORAGE_URL to s3://bucket[/prefix] (with S3_ENDPOINT_URL and AWS_* for a non-AWS "
                          "store): results must outlive the rented box, and the frontend reads them there",
                          EXIT_CONFIG)
    return env | {"PUBLIC_BIND": "true"}


def node_env(env: dict[str, str], name: str | None) -> dict[str, str]:
    """A GPU node's settings: the broker (with a password) and the bucket; no key, no port, no idle stop of
    its own (the backend's queue decides). docker/onstart.sh starts `python -m backend.node` for it."""
    broker = urlparse(env.get("BROKER_URL", ""))
    if broker.scheme not in ("redis", "rediss") or not broker.hostname:
        raise LaunchError("set BROKER_URL to the backend's Redis (rediss://:password@host:port/0): a node pulls its "
                          "work from there", EXIT_CONFIG)
    if not broker.password:
        raise LaunchError("BROKER_URL has no password: a Redis that rented boxes reach over the internet must have "
                          "one (requirepass; see docs/NODES.md)", EXIT_CONFIG)
    if broker.hostname in ("localhost", "127.0.0.1", "::1"):
        raise LaunchError("BROKER_URL points at localhost: from the rented box that is the box itself; give the "
                          "address the node can reach", EXIT_CONFIG)
    if not env.get("STORAGE_URL", "").startswith("s3://"):
        raise LaunchError("set STORAGE_URL to the backend's s3://bucket[/prefix]: a node writes its images there",
                          EXIT_CONFIG)
    kept = {k: v for k, v in env.items() if k not in NODE_DROPS}
    return kept | {"SHOWROOM_ROLE": "node", "SHOWROOM_NODE_NAME": name or f"vast-{uuid.uuid4().hex[:6]}"}


def broker_warning(env: dict[str, str]) -> str | None:
    """Celery (kombu) takes a rediss:// URL without ssl_cert_reqs as 'encrypt, but trust any certificate'; Showroom's
    own Celery configuration checks it anyway (backend.gpu.celery_app), other tools given the URL would not."""
    broker = urlparse(env.get("BROKER_URL", ""))
    if broker.scheme == "rediss" and "ssl_cert_reqs=required" not in broker.query:
        return ("warning: BROKER_URL is rediss:// without ?ssl_cert_reqs=required: Showroom checks the certificate "
                "anyway, but other Celery tools given this URL would accept any; add it (docs/NODES.md)")
    return None
