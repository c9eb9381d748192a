"""Rented GPU nodes that come and go with the queue: `python docker/vast.py autoscale` (docs/NODES.md).

`decide()` is the whole policy, a pure function: the nodes this tool manages (from vast's instance list),
the backend's GET /health and the wall clock in; actions, each with its reason in plain words, out.
`Autoscaler` runs one round of it against the real APIs.

Nothing is kept in memory between rounds. A managed node is an instance whose vast label is
`showroom-node:<name>`, `<name>` being the node's name in /health (`<name>/<n>` per GPU). The time a node
was first seen idle is written into that same label (`showroom-node:<name> idle-since=<unix seconds>`),
so a restarted autoscaler, or one that cron runs with --once every minute, carries on where the last one
left off, and the vast console shows it.

Only the standard library and `requests`: it runs on a laptop.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass

import requests

from backend.ops.vast import VastAPI, VastError

LABEL_PREFIX = "showroom-node:"
IDLE_MARK = " idle-since="
HEALTH_TIMEOUT_S = 10  # one attempt per round: the next round is the retry


@dataclass(frozen=True)
class Node:
    """A managed instance, as vast lists it."""
    id: int
    name: str
    intended: str | None  # vast's intended_status: what was last asked (running, stopped)
    actual: str | None    # vast's actual_status: None while provisioning, loading, running, stopped, exited, ...
    gpus: int = 1
    price: float = 0.0    # dollars per hour while it runs (dph_total)
    idle_since: float | None = None

    @classmethod
    def from_instance(cls, instance: dict) -> "Node | None":
        """The node an instance is, or None when its label is not ours (never touch those)."""
        label = instance.get("label") or ""
        if not label.startswith(LABEL_PREFIX) or instance.get("id") is None:
            return None
        name, _, mark = label.removeprefix(LABEL_PREFIX).partition(IDLE_MARK.strip())
        try:
            idle_since = float(mark.strip()) if mark.strip() else None
        except ValueError:
            idle_since = None  # a hand-edited label: its idle clock starts again
        return cls(int(instance["id"]), name.strip(), instance.get("intended_status"), instance.get("actual_status"),
                   int(instance.get("num_gpus") or 1), float(instance.get("dph_total") or 0), idle_since)


def label(name: str, idle_since: float | None = None) -> str:
    return LABEL_PREFIX + name + (f"{IDLE_MARK}{int(idle_since)}" if idle_since is not None else "")


@dataclass(frozen=True)
class Health:
    """What the backend's GET /health says about the fleet."""
    workers: tuple[dict, ...]  # {"id": "<node>/<n>", "state": "starting"|"ready"|"busy"|"dead", ...}
    pending: int               # images waiting for a GPU

    @classmethod
    def from_json(cls, answer) -> "Health":
        try:
            workers = tuple(w for w in answer["workers"] if isinstance(w, dict))
            return cls(workers, int(answer["queue"]["pending"]))
        except (KeyError, TypeError, ValueError):
            raise ValueError("the answer has no workers and queue.pending: is this Showroom's /health?") from None

    def of(self, name: str) -> list[dict]:
        return [w for w in self.workers if str(w.get("id", "")).rpartition("/")[0] == name]

    def free(self) -> list[str]:
        return [str(w.get("id")) for w in self.workers if w.get("state") == "ready"]


@dataclass(frozen=True)
class Policy:
    min_nodes: int
    max_nodes: int
    idle_minutes: float
    prefix: str = "node"  # rented nodes are named <prefix>-1, <prefix>-2, ...

    def __post_init__(self):
        if not 0 <= self.min_nodes <= self.max_nodes or self.max_nodes < 1:
            raise ValueError(f"need 0 <= --min <= --max and --max >= 1, got --min {self.min_nodes} "
                             f"--max {self.max_nodes}")
        if self.idle_minutes < 0:
            raise ValueError(f"--idle-minutes must be 0 or more, got {self.idle_minutes:g}")


@dataclass(frozen=True)
class Action:
    verb: str  # start, rent, stop, mark (idle clock starts), clear (idle clock reset), hold (nothing to do)
    reason: str
    node: Node | None = None
    name: str | None = None  # rent: the new node's name

    def __str__(self) -> str:
        what = {"start": f"starting node {self.name} (stopped)",
                "rent": f"renting a new node {self.name}",
                "stop": f"stopping node {self.name} (it keeps its disk and model cache, and costs only storage)",
                "mark": f"node {self.name}'s idle clock starts now",
                "clear": f"node {self.name}'s idle clock is reset"}.get(self.verb)
        return f"{self.reason}: {what}" if what else self.reason


def plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def ours_run(count: int) -> str:
    return f"{plural(count, 'node')} of ours run{'s' if count == 1 else ''}"


def condition(node: Node, health: Health) -> str:
    """stopped (or stopping), starting (asked to run, not taking work yet), up (every worker ready or busy),
    broken (running but its workers are dead, or the container exited or its host is gone)."""
    if node.intended == "stopped":
        return "stopped"
    workers = health.of(node.name)
    if node.actual == "running":
        if workers and all(w.get("state") in ("ready", "busy") for w in workers):
            return "up"
        return "broken" if any(w.get("state") == "dead" for w in workers) else "starting"
    if node.actual in (None, "", "created", "loading", "scheduling", "stopped", "rebooting"):
        return "starting"
    return "broken"  # exited, frozen, unknown, offline


def idle_reason(node: Node, state: str, health: Health) -> str | None:
    """Why a node counts as doing nothing, or None when it is working (or may be about to)."""
    workers = health.of(node.name)
    if state == "up" and health.pending == 0 and all(w.get("state") == "ready" for w in workers):
        return f"all {plural(len(workers), 'GPU')} ready and nothing waits"
    if state == "broken":
        dead = [str(w.get("id")) for w in workers if w.get("state") == "dead"]
        return f"its workers are dead ({', '.join(dead)})" if dead else f"vast says it is {node.actual}"
    return None


def next_name(nodes: list[Node], prefix: str) -> str:
    taken, k = {n.name for n in nodes}, 1
    while f"{prefix}-{k}" in taken:
        k += 1
    return f"{prefix}-{k}"


def decide(nodes: list[Node], health: Health, now: float, policy: Policy) -> list[Action]:
    """One round's actions: at most one node started or rented, idle clocks kept, idle nodes stopped."""
    state = {n.id: condition(n, health) for n in nodes}
    running = [n for n in nodes if state[n.id] != "stopped"]
    stopped = sorted((n for n in nodes if state[n.id] == "stopped"), key=lambda n: (n.price, n.id))
    starting = [n for n in running if state[n.id] == "starting"]
    free = health.free()
    return scale_up(running, stopped, starting, free, health, nodes, policy) + idle_clocks(
        running, state, health, now, policy)


def scale_up(running, stopped, starting, free, health, nodes, policy) -> list[Action]:
    waits = f"{plural(health.pending, 'image')} wait{'s' if health.pending == 1 else ''}"
    if health.pending > 0 and not free:
        why = f"{waits} and no GPU is free"
    elif len(running) < policy.min_nodes:
        why = f"{ours_run(len(running))} and --min is {policy.min_nodes}"
    elif health.pending > 0:
        return [Action("hold", f"{waits} and {plural(len(free), 'GPU')} {'is' if len(free) == 1 else 'are'} "
                               f"free ({', '.join(free)}): nothing to start")]
    else:
        return []
    if starting:
        names = ", ".join(n.name for n in starting)
        return [Action("hold", f"{why}; node {names} is starting (asked to run, not taking work yet): "
                               "waiting for it rather than starting another")]
    if len(running) >= policy.max_nodes:
        return [Action("hold", f"{why}, but {ours_run(len(running))} and --max is {policy.max_nodes}: starting none")]
    if stopped:
        return [Action("start", why, stopped[0], stopped[0].name)]
    return [Action("rent", f"{why} and none of ours is stopped", name=next_name(nodes, policy.prefix))]


def idle_clocks(running, state, health, now, policy) -> list[Action]:
    actions, due = [], []
    limit_s = policy.idle_minutes * 60
    for node in running:
        reason = idle_reason(node, state[node.id], health)
        if reason is None:
            if node.idle_since is not None:
                actions.append(Action("clear", f"node {node.name} is {state[node.id]} again", node, node.name))
            continue
        since = node.idle_since if node.idle_since is not None and node.idle_since <= now else now
        idle = f"node {node.name} has done no work for {(now - since) / 60:.0f} of {policy.idle_minutes:g} minutes"
        if now - since >= limit_s:
            due.append((since, node, f"{idle} ({reason})"))
        elif node.idle_since is None or node.idle_since > now:
            actions.append(Action("mark", f"node {node.name} is idle ({reason})", node, node.name))
        else:
            actions.append(Action("hold", f"{idle} ({reason})"))
    spare = len(running) - policy.min_nodes
    for since, node, why in sorted(due, key=lambda d: (d[0], d[1].id)):
        if spare > 0:
            actions.append(Action("stop", why, node, node.name))
            spare -= 1
        else:
            actions.append(Action("hold", f"{why}, but --min is {policy.min_nodes}: keeping it running"))
    return actions


def summary(nodes: list[Node], health: Health) -> str:
    ours = ", ".join(f"{n.name} {condition(n, health)}" for n in nodes) or "none yet"
    return (f"queue: {plural(health.pending, 'image')} waiting; GPUs free: {len(health.free())} of "
            f"{len(health.workers)}; our nodes: {ours}")


class Autoscaler:
    """One round at a time against vast.ai and the backend. Every failure is reported and left for the next
    round, which decides again from what vast and /health then say."""

    def __init__(self, api: VastAPI, backend_url: str, backend_key: str | None, policy: Policy,
                 rent: Callable[[str], None], say: Callable[[str], None], wall: Callable[[], float] = time.time):
        self.api, self.policy, self.rent, self.say, self.wall = api, policy, rent, say, wall
        self.health_url = f"{backend_url.rstrip('/')}/health"
        self.session = requests.Session()
        if backend_key:
            self.session.headers["Authorization"] = f"Bearer {backend_key}"

    def health(self) -> Health:
        answer = self.session.get(self.health_url, timeout=HEALTH_TIMEOUT_S)
        if answer.status_code != 200:
            raise ValueError(f"it answered {answer.status_code}")
        return Health.from_json(answer.json())

    def round(self) -> bool:
        """Decide and act once; False when something failed (it is tried again next round)."""
        try:
            nodes = [n for n in map(Node.from_instance, self.api.instances()) if n is not None]
        except VastError as e:
            self.say(f"vast.ai's instance list failed ({e}): nothing changes this round; trying again next round")
            return False
        try:
            health = self.health()
        except (requests.RequestException, ValueError) as e:
            self.say(f"{self.health_url} failed ({e}): without the queue nothing is started or stopped this round; "
                     "trying again next round")
            return False
        now = self.wall()
        self.say(summary(nodes, health))
        ok = True
        for action in decide(nodes, health, now, self.policy):
            self.say(str(action))
            try:
                self.apply(action, now)
            except VastError as e:
                self.say(f"  that failed ({e}); trying again next round")
                ok = False
        return ok

    def apply(self, action: Action, now: float) -> None:
        node = action.node
        if action.verb == "start":
            self.api.update(node.id, {"state": "running"})
        elif action.verb == "stop":  # the label loses its idle mark: a restarted node's clock starts afresh
            self.api.update(node.id, {"state": "stopped", "label": label(node.name)})
        elif action.verb == "mark":
            self.api.update(node.id, {"label": label(node.name, now)})
        elif action.verb == "clear":
            self.api.update(node.id, {"label": label(node.name)})
        elif action.verb == "rent":
            self.rent(action.name)
