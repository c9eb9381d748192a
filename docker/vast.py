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
from pathlib import Path

# Run as a script from anywhere: the repo root holds the one vast.ai client, which needs only `requests`; this
# folder holds the launcher's own modules (on the path already when run as a script, not when loaded from its file).
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
if str(HERE) not in sys.path:
    sys.path.insert(1, str(HERE))
from vast_env import (  # noqa: E402
    EXIT_API,
    EXIT_CONFIG,
    EXIT_CREATE,
    EXIT_NO_OFFER,
    LaunchError,
    Redactor,
    api_key,
    backend_api_key,
    broker_warning,
    hide_secrets,
    instance_env,
    is_secret,
)
from vast_instance import (  # noqa: E402
    ONSTART_LIMIT,
    create_body,
    describe,
    no_offer_message,
    offer_query,
    public_url,
    wait_healthy,
    wait_node,
)

from backend.ops.autoscale import Autoscaler, Policy  # noqa: E402
from backend.ops.vast import VAST_API_URL, VastAPI  # noqa: E402

AUTOSCALE_HELP = """Start and stop GPU nodes with the backend's queue (docs/NODES.md).

Each round reads vast's instance list and the backend's GET /health. When images wait and no GPU is free,
it starts one of its stopped nodes, or rents a new one as `up --role node` does, never running more than
--max. A node whose GPUs all sat ready with nothing waiting for --idle-minutes is stopped, never leaving
fewer than --min running. Stopped rather than destroyed: a stopped box keeps its disk (the image and the
model cache) and costs only storage, so starting it again takes seconds rather than a fresh download.

Its nodes are the instances labelled showroom-node:<name>; the label also holds the time a node was first
seen idle, so the autoscaler keeps no state of its own: restart it at will, or run it from cron with --once.
Instances with other labels are never touched."""


def cmd_offers(api: VastAPI, args, say) -> int:
    offers = api.offers(offer_query(args))
    if not offers:
        raise LaunchError(no_offer_message(args), EXIT_NO_OFFER)
    for offer in offers:
        say(describe(offer))
    return 0


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
