"""The box docker/vast.py rents, and the wait for it: the offer search, the create request (docker/onstart.sh as
its onstart script in SSH mode), and polling until the backend's /health says ok, or until a GPU node's workers are
ready in its backend's /health.
"""

from collections.abc import Callable
from pathlib import Path

import requests
from vast_env import EXIT_API, EXIT_UNHEALTHY, LaunchError

from backend.ops.autoscale import label
from backend.ops.vast import VastAPI

ONSTART = Path(__file__).with_name("onstart.sh")
ONSTART_LIMIT = 4048  # vast's cap on the onstart field


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


def no_offer_message(args) -> str:
    return (f"no offer matches: {args.gpus} GPU(s), >= {args.min_vram:g} GB VRAM, <= ${args.max_price:g}/h, "
            f"reliability >= {args.min_reliability}, CUDA >= {args.min_cuda}, {args.disk} GB disk; "
            "raise --max-price, lower --min-vram or --min-reliability, or try again later")


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
