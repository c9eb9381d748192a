"""Rent a GPU on vast.ai for the Showroom backend, wait until it is healthy, print its URL; stop or destroy it.

    python docker/vast.py offers --gpus 1 --min-vram 16 --max-price 0.60
    python docker/vast.py up --image ghcr.io/you/showroom:latest --env-file docker/vast.env
    python docker/vast.py up --role node --image ghcr.io/you/showroom:latest --env-file docker/node.env \
        --backend-url https://your-backend:8000      (a GPU node: pulls work from BROKER_URL, see docs/NODES.md)
    python docker/vast.py autoscale --backend-url https://your-backend:8000 --env-file docker/node.env \
        --image ghcr.io/you/showroom:latest --min 0 --max 3 --idle-minutes 15   (nodes follow the queue)
    python docker/vast.py status ID | stop ID | start ID | destroy ID

The vast.ai key comes from VAST_API_KEY or the vastai CLI's key file (~/.config/vastai/vast_api_key),
never from the command line. No secret is ever printed: values of names holding KEY, SECRET, TOKEN
or PASSWORD are replaced by *** in everything this prints. `--dry-run` sends only read-only requests
(offer search, instance status) and prints the others. `--api-url` (or VAST_API_URL) points it at
another API base: the tests run it against a local stand-in.

Only the standard library and `requests` (in frontend/requirements.txt): it runs on a laptop.
"""

import argparse
import os
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import requests

# Run as a script from anywhere: the repo root holds the one vast.ai client, which needs only `requests`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from backend.ops.autoscale import Autoscaler, Policy, label  # noqa: E402
from backend.ops.vast import VAST_API_URL, VastAPI, VastError  # noqa: E402

KEY_FILE = Path("~/.config/vastai/vast_api_key").expanduser()
ONSTART = Path(__file__).with_name("onstart.sh")
ONSTART_LIMIT = 4048  # vast's cap on the onstart field
SECRET_MARKERS = ("KEY", "SECRET", "TOKEN", "PASSWORD", "BROKER_URL")  # BROKER_URL holds Redis's password
# Backend settings taken from this shell when the env file does not set them (CONTRACT.md + ours).
PASS_THROUGH = ("MODEL_ID", "DEVICE", "WORKERS", "STORAGE_URL", "S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "API_KEY", "UPSCALER", "REPLICATE_API_TOKEN",
                "REPLICATE_BASE_URL", "IDLE_STOP_MINUTES", "HF_TOKEN", "BROKER_URL", "BG_REMOVAL_MODEL",
                "IMAGE_TIMEOUT_S")
NODE_DROPS = ("API_KEY", "PUBLIC_BIND", "IDLE_STOP_MINUTES", "UPSCALER", "REPLICATE_API_TOKEN", "EXECUTOR")
EXIT_API, EXIT_CONFIG, EXIT_NO_OFFER, EXIT_CREATE, EXIT_UNHEALTHY = 1, 2, 3, 4, 5


AUTOSCALE_HELP = """Start and stop GPU nodes with the backend's queue (docs/NODES.md).

Each round reads vast's instance list and the backend's GET /health. When images wait and no GPU is free,
it starts one of its stopped nodes, or rents a new one as `up --role node` does, never running more than
--max. A node whose GPUs all sat ready with nothing waiting for --idle-minutes is stopped, never leaving
fewer than --min running. Stopped rather than destroyed: a stopped box keeps its disk (the image and the
model cache) and costs only storage, so starting it again takes seconds rather than a fresh download.

Its nodes are the instances labelled showroom-node:<name>; the label also holds the time a node was first
seen idle, so the autoscaler keeps no state of its own: restart it at will, or run it from cron with --once.
Instances with other labels are never touched."""


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


def offer_query(args) -> dict:
    """vast's search filter: GPU count, VRAM (MB in the REST API), price, reliability, CUDA, disk."""
    query = {"verified": {"eq": True}, "external": {"eq": False}, "rentable": {"eq": True},
             "rented": {"eq": False}, "num_gpus": {"eq": args.gpus}, "gpu_ram": {"gte": args.min_vram * 1000},
             "dph_total": {"lte": args.max_price}, "reliability": {"gte": args.min_reliability},
             "cuda_max_good": {"gte": args.min_cuda}, "disk_space": {"gte": args.disk},
             "direct_port_count": {"gte": 1}, "order": [["dph_total", "asc"]], "type": "on-demand",
             "limit": args.limit, "allocated_storage": args.disk}
    if getattr(args, "role", "backend") == "node":
        del query["direct_port_count"]  # a node only connects out: any box will do, NAT or not
    if args.gpu_name:
        query["gpu_name"] = {"eq": args.gpu_name.replace("_", " ")}
    return query


def describe(offer: dict) -> str:
    return (f"offer {offer.get('id')}: {offer.get('num_gpus')}x {offer.get('gpu_name')} "
            f"{(offer.get('gpu_ram') or 0) / 1000:.0f} GB, ${offer.get('dph_total', 0):.3f}/h, "
            f"reliability {offer.get('reliability', offer.get('reliability2', 0)):.3f}, "
            f"CUDA {offer.get('cuda_max_good')}, {offer.get('geolocation') or 'unknown location'}")


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


def onstart_script() -> str:
    """docker/onstart.sh without its full-line comments (the shebang stays): vast caps the field."""
    lines = ONSTART.read_text().splitlines()
    kept = [lines[0]] + [line for line in lines[1:] if not line.lstrip().startswith("#")]
    return "\n".join(kept) + "\n"


def create_body(args, env: dict[str, str]) -> dict:
    node = env.get("SHOWROOM_ROLE") == "node"
    ports = {} if node else {"-p 8000:8000": "1"}  # a node opens no port
    # A node's label makes it one that `autoscale` manages (backend/ops/autoscale.py), unless --label says otherwise.
    name = args.label or (label(env["SHOWROOM_NODE_NAME"]) if node else "showroom")
    body = {"client_id": "me", "image": args.image, "disk": args.disk, "label": name,
            "env": env | ports, "runtype": args.runtype}
    if args.runtype == "ssh":
        # vast's SSH mode replaces the entrypoint and sets up sshd, which needs root; onstart.sh then runs
        # the backend as the image's non-root user. In "args" mode the image's own USER and CMD run.
        body |= {"onstart": onstart_script(), "user": "root"}
    return body


def public_url(instance: dict) -> str | None:
    mapped = (instance.get("ports") or {}).get("8000/tcp") or []
    ip = (instance.get("public_ipaddr") or "").strip()
    if ip and mapped and mapped[0].get("HostPort"):
        return f"http://{ip}:{mapped[0]['HostPort']}"
    return None


def wait_healthy(api: VastAPI, instance_id: int, timeout_s: float, poll_s: float,
                 clock: Callable[[], float], sleep: Callable[[float], None]) -> str:
    """Poll the instance, then its /health (plain GET, never with the vast key), until status is "ok"."""
    deadline, last = clock() + timeout_s, "vast.ai has not scheduled the instance yet"
    while True:
        try:
            instance = api.instance(instance_id)
            status, url = instance.get("actual_status"), public_url(instance)
            if status == "exited":
                raise LaunchError(f"the container exited: {instance.get('status_msg') or 'see its logs'}",
                                  EXIT_UNHEALTHY)
            if status == "running" and url:
                last = f"{url}/health does not answer yet"
                health = requests.get(f"{url}/health", timeout=10).json()
                if health.get("status") == "ok":
                    return url
                if health.get("status") == "error":
                    raise LaunchError(f"the backend reports an error: {health.get('detail')}", EXIT_UNHEALTHY)
                last = f"backend is {health.get('status')}: {health.get('detail') or 'no detail'}"
            else:
                last = f"instance is {status or 'being provisioned'}: {instance.get('status_msg') or 'no message'}"
        except (requests.RequestException, ValueError):
            pass  # not up yet, or not JSON yet: keep polling until the deadline
        except LaunchError as e:
            if e.code != EXIT_API:
                raise
            last = str(e)  # vast's API had a hiccup: keep polling until the deadline
        if clock() + poll_s > deadline:
            raise LaunchError(f"not healthy after {timeout_s:.0f} s; last seen: {api.redact(last)}", EXIT_UNHEALTHY)
        sleep(poll_s)


def cmd_offers(api: VastAPI, args, say) -> int:
    offers = api.offers(offer_query(args))
    if not offers:
        raise LaunchError(no_offer_message(args), EXIT_NO_OFFER)
    for offer in offers:
        say(describe(offer))
    return 0


def no_offer_message(args) -> str:
    return (f"no offer matches: {args.gpus} GPU(s), >= {args.min_vram:g} GB VRAM, <= ${args.max_price:g}/h, "
            f"reliability >= {args.min_reliability}, CUDA >= {args.min_cuda}, {args.disk} GB disk; "
            "raise --max-price, lower --min-vram or --min-reliability, or try again later")


def wait_node(api: VastAPI, instance_id: int, name: str, backend_url: str | None, key: str | None,
              timeout_s: float, poll_s: float, clock: Callable[[], float], sleep: Callable[[float], None]) -> str:
    """Poll the instance until it runs and, with a backend URL, that backend's /health until the node's
    workers (`<name>/<n>`) are ready. Returns what was seen."""
    deadline, last = clock() + timeout_s, "vast.ai has not scheduled the instance yet"
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    while True:
        try:
            instance = api.instance(instance_id)
            status = instance.get("actual_status")
            if status == "exited":
                raise LaunchError(f"the container exited: {instance.get('status_msg') or 'see its logs'}",
                                  EXIT_UNHEALTHY)
            if status == "running" and not backend_url:
                return f"instance {instance_id} runs; node {name} shows in your backend's /health once its model loads"
            if status == "running":
                workers = requests.get(f"{backend_url.rstrip('/')}/health", headers=headers, timeout=10).json().get(
                    "workers") or []
                mine = [w for w in workers if str(w.get("id", "")).startswith(f"{name}/")]
                if mine and all(w.get("state") in ("ready", "busy") for w in mine):
                    return f"node {name} is taking work: {', '.join(w['id'] for w in mine)} in {backend_url}/health"
                last = (f"node {name}'s workers are {', '.join(w.get('state', '?') for w in mine)}" if mine
                        else f"node {name} has not reported to {backend_url} yet (model download, broker reachable?)")
            else:
                last = f"instance is {status or 'being provisioned'}: {instance.get('status_msg') or 'no message'}"
        except (requests.RequestException, ValueError):
            last = f"{backend_url}/health does not answer"
        except LaunchError as e:
            if e.code != EXIT_API:
                raise
            last = str(e)
        if clock() + poll_s > deadline:
            raise LaunchError(f"node not ready after {timeout_s:.0f} s; last seen: {api.redact(last)}", EXIT_UNHEALTHY)
        sleep(poll_s)


def cmd_up(api: VastAPI, args, say, environ, clock, sleep) -> int:
    if args.role == "node" and args.runtype != "ssh":
        raise LaunchError("--role node needs --runtype ssh: docker/onstart.sh starts the node (the image's own "
                          "command is the backend)", EXIT_CONFIG)
    env = instance_env(args.env_file, environ, args.role, args.node_name)
    backend_key = backend_api_key(args, environ)
    hide_secrets(api, env | {"API_KEY": backend_key or ""})
    if warning := broker_warning(env):
        say(warning)
    body = create_body(args, env)
    if len(body.get("onstart", "")) > ONSTART_LIMIT:
        raise LaunchError(f"docker/onstart.sh is over vast's {ONSTART_LIMIT} characters", EXIT_CONFIG)
    offers = api.offers(offer_query(args))
    if not offers:
        raise LaunchError(no_offer_message(args), EXIT_NO_OFFER)
    offer = offers[0]
    say(describe(offer))
    try:
        instance_id = api.create(offer["id"], body)
    except LaunchError as e:
        raise LaunchError(f"could not rent offer {offer['id']}: {e}; nothing was created, run again "
                          "to try the next cheapest offer", EXIT_CREATE) from None
    if instance_id is None:  # dry run
        return 0
    say(f"created instance {instance_id} (${offer.get('dph_total', 0):.3f}/h while it runs)")
    say(f"  stop it:    python docker/vast.py stop {instance_id}")
    say(f"  destroy it: python docker/vast.py destroy {instance_id}")
    say(f"waiting up to {args.timeout:.0f} s for the image, the model and GET /health ...")
    try:
        if args.role == "node":
            say(wait_node(api, instance_id, env["SHOWROOM_NODE_NAME"], args.backend_url, backend_key, args.timeout,
                          args.poll, clock, sleep))
            return 0
        url = wait_healthy(api, instance_id, args.timeout, args.poll, clock, sleep)
    except LaunchError:
        if args.keep_on_failure:
            say(f"instance {instance_id} is kept (--keep-on-failure) and costs money until you destroy it")
        else:
            try:
                api.destroy(instance_id)
                say(f"destroyed instance {instance_id} so it costs nothing (--keep-on-failure keeps it to debug)")
            except LaunchError as failed:
                say(f"could not destroy instance {instance_id} ({failed}): destroy it yourself, it costs money")
        raise
    say(f"healthy. Put this in the frontend's secrets (API_KEY as in your env file):\nBACKEND_URL={url}")
    return 0


def backend_api_key(args, environ) -> str | None:
    """The backend's API_KEY, for its /health: from the env file, else this shell. Never sent to a node."""
    return (read_env_file(args.env_file) if args.env_file else {}).get("API_KEY") or environ.get("API_KEY")


def hide_secrets(api: VastAPI, env: dict[str, str]) -> None:
    for name, value in env.items():
        if is_secret(name) and value:
            api.redact.add(value)


def cmd_autoscale(api: VastAPI, args, say, environ, wall, sleep) -> int:
    """Rounds of backend.ops.autoscale: one with --once (for cron), else one every --every seconds."""
    try:
        policy = Policy(args.min, args.max, args.idle_minutes, args.node_prefix)
    except ValueError as e:
        raise LaunchError(str(e), EXIT_CONFIG) from None
    key, env = backend_api_key(args, environ), instance_env(args.env_file, environ, "node", "check")
    hide_secrets(api, env | {"API_KEY": key or ""})
    if warning := broker_warning(env):
        say(warning)

    def rent(name: str) -> None:
        """As `up --role node` does, under the label that makes it ours; no wait: later rounds watch it."""
        body = create_body(args, instance_env(args.env_file, environ, "node", name))
        offers = api.offers(offer_query(args))
        if not offers:
            raise LaunchError(no_offer_message(args), EXIT_NO_OFFER)
        say(f"  {describe(offers[0])}")
        instance_id = api.create(offers[0]["id"], body)
        if instance_id is not None:
            say(f"  created instance {instance_id} for node {name} (${offers[0].get('dph_total', 0):.3f}/h while it "
                "runs); its workers show in /health once its model loads")

    scaler = Autoscaler(api, args.backend_url, key, policy, rent, say, wall)
    if args.once:
        return 0 if scaler.round() else EXIT_API
    say(f"autoscaling nodes {args.min}..{args.max} every {args.every:g} s; Ctrl-C ends it (the nodes stay as they are)")
    try:
        while True:
            try:
                scaler.round()
            except Exception as e:  # a loop left running unattended reports what went wrong and carries on
                say(f"this round failed ({type(e).__name__}: {e}); trying again next round")
            sleep(args.every)
    except KeyboardInterrupt:
        say("autoscale ended; the nodes stay as they are")
        return 0


def cmd_status(api: VastAPI, args, say) -> int:
    instance = api.instance(args.id)
    say(f"instance {args.id}: {instance.get('actual_status') or 'unknown'} "
        f"(wants {instance.get('intended_status') or 'unknown'}), ${instance.get('dph_total', 0):.3f}/h, "
        f"url {public_url(instance) or 'none yet'}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python docker/vast.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--api-url", default=None, help=f"vast.ai API base (env VAST_API_URL; default {VAST_API_URL})")
    p.add_argument("--dry-run", action="store_true", help="send read-only requests only; print the others")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("autoscale", description=AUTOSCALE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in ("offers", "up", "autoscale"):
        s = sub.choices.get(name) or sub.add_parser(name)
        s.add_argument("--gpus", type=int, default=1, help="GPUs per instance (one worker each)")
        s.add_argument("--min-vram", type=float, default=16, help="GB per GPU (SD 1.5 needs ~4, SDXL ~10)")
        s.add_argument("--max-price", type=float, default=0.60, help="dollars per hour, whole instance")
        s.add_argument("--min-reliability", type=float, default=0.98)
        s.add_argument("--min-cuda", type=float, default=12.8, help="host driver's CUDA; the image needs 12.8")
        s.add_argument("--gpu-name", default=None, help="e.g. RTX_4090 (underscores for spaces)")
        s.add_argument("--disk", type=int, default=40, help="GB of disk: image, model cache, LoRAs")
        s.add_argument("--limit", type=int, default=10)
    up = sub.choices["up"]
    up.add_argument("--image", required=True, help="the backend image, built from ./Dockerfile and pushed")
    up.add_argument("--env-file", type=Path, default=None, help="NAME=value lines: the backend's settings")
    up.add_argument("--runtype", choices=("ssh", "args"), default="ssh",
                    help="ssh: SSH access, docker/onstart.sh starts the backend; args: the image's CMD only")
    up.add_argument("--role", choices=("backend", "node"), default="backend",
                    help="backend: the API and its GPUs; node: a GPU node that pulls work from BROKER_URL")
    up.add_argument("--node-name", default=None, help="--role node: its name in /health (default vast-<random>)")
    up.add_argument("--backend-url", default=None,
                    help="--role node: wait until this backend's /health lists the node (API_KEY from the env file)")
    up.add_argument("--label", default=None,
                    help="vast label; default showroom, or showroom-node:NAME for a node (which autoscale manages)")
    up.add_argument("--timeout", type=float, default=1800, help="seconds to wait for GET /health to say ok")
    up.add_argument("--poll", type=float, default=15, help="seconds between status checks")
    up.add_argument("--keep-on-failure", action="store_true", help="do not destroy an instance that never got healthy")
    scale = sub.choices["autoscale"]
    scale.set_defaults(role="node", runtype="ssh", label=None)  # what `up --role node` rents, labelled as its own
    scale.add_argument("--backend-url", required=True, help="the backend whose GET /health shows the queue and nodes")
    scale.add_argument("--env-file", type=Path, required=True,
                       help="the nodes' settings, as for up --role node (its API_KEY is used for /health only)")
    scale.add_argument("--image", required=True, help="the image a newly rented node runs")
    scale.add_argument("--min", type=int, default=0, help="nodes of ours kept running, idle or not")
    scale.add_argument("--max", type=int, default=1, help="nodes of ours running at most (stopped ones not counted)")
    scale.add_argument("--idle-minutes", type=float, default=15,
                       help="stop a node whose GPUs all sat ready with nothing waiting this long. Stopped, not "
                            "destroyed: it keeps its disk and model cache, costs only storage, and starts again "
                            "without downloading anything")
    scale.add_argument("--node-prefix", default="node", help="rented nodes are named PREFIX-1, PREFIX-2, ...")
    scale.add_argument("--every", type=float, default=60, help="seconds between rounds")
    scale.add_argument("--once", action="store_true", help="one round, printed, then exit (for cron and tests)")
    scale.add_argument("--dry-run", action="store_true", default=argparse.SUPPRESS,
                       help="print the decisions and the requests they would send; send only reads")
    for name in ("status", "stop", "start", "destroy"):
        sub.add_parser(name).add_argument("id", type=int)
    return p


def api_key(environ) -> str:
    key = (environ.get("VAST_API_KEY") or "").strip()
    if not key and KEY_FILE.is_file():
        key = KEY_FILE.read_text().strip()
    if not key:
        raise LaunchError(f"no vast.ai API key: set VAST_API_KEY or write it to {KEY_FILE} "
                          "(https://cloud.vast.ai/manage-keys/)", EXIT_CONFIG)
    return key


def main(argv: list[str] | None = None, environ=None, out=None, clock=time.monotonic, sleep=time.sleep,
         wall=time.time) -> int:
    environ = os.environ if environ is None else environ
    out = out or sys.stdout
    redact = Redactor()

    def say(text: str) -> None:
        print(redact(text), file=out, flush=True)

    args = parser().parse_args(argv)
    try:
        key = api_key(environ)
        redact.add(key)
        api = VastAPI(key, args.api_url or environ.get("VAST_API_URL") or VAST_API_URL, redact=redact, say=say,
                      dry_run=args.dry_run, secret_field=is_secret)
        if args.command == "offers":
            return cmd_offers(api, args, say)
        if args.command == "up":
            return cmd_up(api, args, say, environ, clock, sleep)
        if args.command == "status":
            return cmd_status(api, args, say)
        if args.command == "autoscale":
            return cmd_autoscale(api, args, say, environ, wall, sleep)
        if args.command == "destroy":
            api.destroy(args.id)
        else:
            api.set_state(args.id, "stopped" if args.command == "stop" else "running")
        if not args.dry_run:
            say(f"instance {args.id}: {args.command} requested")
        return 0
    except LaunchError as e:
        print(redact(f"error: {e}"), file=sys.stderr if out is sys.stdout else out, flush=True)
        return e.code


if __name__ == "__main__":
    sys.exit(main())
