"""A catalog run: several products x several styles x N pictures each, sent as batches of jobs; then
the run's jobs read back from storage, grouped by product. Nothing here draws.

A run of more than MAX_BATCH jobs is split into batches of up to MAX_BATCH, sent one after another. Each
batch is admitted whole or not at all, so a refusal stops the run there: the batches already admitted keep
going, and the jobs not sent are kept so that the page can offer to send them (the queue has room again
once the first pictures are made).
"""

import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from backend.storage import Storage, StorageError
from frontend.client import BackendError, BackendOffline, ShowroomClient
from frontend.cost import DEFAULT_MAX_JOB_COST, STANDARD_STEPS, amount, job_cost
from frontend.jobs import JobView, is_job_id, load_job
from frontend.reuse import variation
from frontend.speed import work

MAX_BATCH = 50          # the most specs POST /v1/batches takes at once
MAX_RUN_JOBS = 400      # the most job ids a run link carries (33 characters each in the URL)
READERS = 8             # manifests read side by side when the grid refreshes
URL_SEPARATOR = "."     # not encoded in a URL (a comma would show as %2C); a comma is read too
STEPS = (1, 150)        # the steps a job may ask for (backend.models.JobSpec.steps)


@dataclass(frozen=True)
class Entry:
    """One job of the run: a product in a style."""
    product: str
    style: str          # the style's name, as the page shows it
    spec: dict
    cost: float
    work: float | None = None   # what it asks of the GPU, unfloored (speed.work): what its time is estimated from

    @property
    def label(self) -> str:
        return f"{self.product} in the style “{self.style}”"


@dataclass(frozen=True)
class Plan:
    entries: list[Entry]

    @property
    def jobs(self) -> int:
        return len(self.entries)

    @property
    def images(self) -> int:
        return sum(e.spec["num_images"] for e in self.entries)

    @property
    def cost(self) -> float:
        return round(sum(e.cost for e in self.entries), 2)

    @property
    def work(self) -> float:
        return sum(e.cost if e.work is None else e.work for e in self.entries)

    @property
    def batches(self) -> int:
        return -(-self.jobs // MAX_BATCH)

    @property
    def too_many(self) -> bool:
        """More jobs than one run's link can carry: the grid would lose the rest without a word."""
        return self.jobs > MAX_RUN_JOBS

    def too_big(self, limit: float = DEFAULT_MAX_JOB_COST) -> list[Entry]:
        return [e for e in self.entries if e.cost > limit]


def suits(template: dict, mode: str) -> bool:
    return mode in (template.get("modes") or (mode,))


def styles_for(templates: list[dict], exact: bool) -> list[dict]:
    """The styles a run can use: without a photo to restyle, those made for placing a product (exact) or
    for drawing a scene."""
    return [t for t in templates if suits(t, "place" if exact else "generate")]


def mode_for(product: dict, template: dict, exact: bool) -> str:
    """Place the product's own photo where it has one (and the style is made for it); else draw it."""
    if exact and product.get("packshot_key") and suits(template, "place"):
        return "place"
    return "generate"


def steps_problem(steps: float | None) -> str | None:
    """Why the generator would refuse the steps typed, with the value; None when they can be sent (None: each
    style's own). The field has no range of its own: a browser keeps a value outside it to itself, red in
    the field, and the page would go on without it."""
    if steps is None or (STEPS[0] <= steps <= STEPS[1] and steps == int(steps)):
        return None
    return (f"Steps go from {STEPS[0]} to {STEPS[1]}, and the field under Advanced settings says {steps:g}. "
            "Change it, or empty it to use each style's own.")


def own_steps(templates: list[dict]) -> str:
    """The steps the styles use when none are typed: "30", or "30 to 45"."""
    steps = sorted({int(t.get("steps") or STANDARD_STEPS) for t in templates})
    return f"{steps[0]}" if len(steps) == 1 else f"{steps[0]} to {steps[-1]}"


def plan(products: list[dict], templates: list[dict], num_images: int, width: int, height: int,
         steps: int | None, exact: bool) -> Plan:
    """Every product in every style, products first (the order the grid shows them in)."""
    entries = []
    for product in products:
        for template in templates:
            job_steps = int(steps or template.get("steps") or STANDARD_STEPS)
            spec = {"product": product["name"], "template": template["id"], "num_images": num_images,
                    "width": width, "height": height, "mode": mode_for(product, template, exact)}
            if steps:
                spec["steps"] = int(steps)
            entries.append(Entry(product["name"], template.get("name") or template["id"], spec,
                                 job_cost(width, height, job_steps, num_images),
                                 work(width, height, job_steps, num_images)))
    return Plan(entries)


def drawn_unlearnt(plan: Plan, products: list[dict]) -> list[dict]:
    """The products the plan draws (in at least one style) that Showroom has not learnt: each comes from its name
    alone, a product like it, not it."""
    drawn = {e.product for e in plan.entries if e.spec["mode"] == "generate"}
    return [p for p in products if p["name"] in drawn and not p.get("has_lora")]


@dataclass
class Outcome:
    job_ids: list[str] = field(default_factory=list)
    left: list[Entry] = field(default_factory=list)   # not sent: after a refusal, or not answered
    refusal: str | None = None                        # what went wrong, in words


def send(client: ShowroomClient, entries: list[Entry]) -> Outcome:
    """The entries as batches of up to MAX_BATCH, in order, until one is refused."""
    outcome = Outcome()
    for start in range(0, len(entries), MAX_BATCH):
        chunk = entries[start:start + MAX_BATCH]
        try:
            answer = client.submit_batch([e.spec for e in chunk])
        except BackendError as e:
            outcome.left = entries[start:]
            outcome.refusal = refusal_words(e, chunk, sent=start, total=len(entries))
            return outcome
        outcome.job_ids += [ticket["id"] for ticket in answer["jobs"]]
    return outcome


ITEM = re.compile(r"^jobs\[(\d+)\](?:: |\.)(.*)$", re.DOTALL)  # "jobs[1]: unknown template", "jobs[1].width: ..."
WAIT = re.compile(r"too many submissions.*try again in (\d+) s", re.DOTALL)
TOO_MUCH = re.compile(r"this job is ([\d.]+) images' worth of work.*the limit is MAX_JOB_COST=([\d.]+)", re.DOTALL)


def refusal_words(error: BackendError, chunk: list[Entry], sent: int, total: int) -> str:
    """A refused batch in plain words, naming the product and the style the generator refused."""
    images = sum(e.spec["num_images"] for e in chunk)
    if isinstance(error, BackendOffline):
        what = (f"The generator did not answer ({error.message}), so the {len(chunk)} jobs sent last may or may "
                "not have started: look in History before sending them again.")
    elif error.status == 429 and (wait := WAIT.search(error.message)):
        what = (f"The generator takes only so many requests a minute: send them again in {wait[1]} seconds. "
                "None of these jobs started.")
    elif error.status == 429:
        what = (f"The generator is too busy to take {images} more pictures right now, so none of them were "
                "started. Send them again in a few minutes, once some pictures are made, or pick fewer "
                "products or styles.")
    elif (item := ITEM.match(error.message)) and int(item[1]) < len(chunk):
        what = (f"Nothing in this batch was started: the job for {chunk[int(item[1])].label} was refused, "
                f"because {_reason(item[2])}")
    else:
        what = f"Nothing in this batch was started: {error.message}"
    if sent:
        what = f"The first {sent} of {total} jobs were started. The other {total - sent} were not. " + what
    return what


def _reason(detail: str) -> str:
    """The backend's reason for one spec, in the shop owner's words where it is one we know."""
    if too_much := TOO_MUCH.search(detail):
        return (f"it is {amount(float(too_much[1]))} of work and the generator takes at most "
                f"{amount(float(too_much[2]))} in one job. Choose fewer pictures for each product and "
                "style, a smaller shape or fewer steps.")
    if detail.startswith("unknown template"):
        return "the generator does not offer this style any more. Reload the page and pick the styles again."
    if detail.startswith("unknown product"):
        return "this product is no longer in the catalog. Reload the page and pick the products again."
    return detail.rstrip(".") + "."


def ids_from_url(value: str | None) -> list[str]:
    """The run's job ids from its link; anything that is not a job id is dropped (a link can be edited)."""
    seen: dict[str, None] = {}
    for part in re.split(r"[.,\s]+", value or ""):
        if is_job_id(part):
            seen.setdefault(part)
    return list(seen)[:MAX_RUN_JOBS]


def ids_to_url(ids: Iterable[str]) -> str:
    return URL_SEPARATOR.join(ids)


def not_made(views: Iterable[JobView], triggers: dict[str, str | None], style_names: dict[str, str]) -> list[Entry]:
    """The pictures a stop canceled, as a job each of the same spec with that many pictures and new seeds (the
    "More like this" spec). A job made from an uploaded photo is left out: a batch carries no photo."""
    entries = []
    for view in views:
        count = sum(img.status == "canceled" for img in view.images)
        if not count or view.input_key:
            continue
        spec = variation(view, triggers.get(view.product or "")) | {"num_images": count}
        style = style_names.get(view.template or "", view.template or "your own words")
        steps = int(spec.get("steps") or STANDARD_STEPS)
        entries.append(Entry(view.product or "no product", style, spec, job_cost(view.width, view.height, steps,
                                                                                 count)))
    return entries


def refresh(storage: Storage, ids: list[str], known: dict[str, JobView]) -> tuple[dict[str, JobView | None], set[str]]:
    """Each job's view: those already terminal as they were (they no longer change), the others read again
    (one GET and one LIST each, READERS at a time). None: no manifest, or not read yet. Also the ids that
    could not be read just now (storage not answering): worth reading again."""
    moving = [i for i in ids if i not in known or not known[i].terminal]
    unreadable: set[str] = set()

    def read(job_id: str) -> JobView | None:
        try:
            return load_job(storage, job_id)
        except StorageError:
            unreadable.add(job_id)
            return known.get(job_id)

    with ThreadPoolExecutor(max_workers=min(READERS, max(1, len(moving)))) as pool:
        fresh = dict(zip(moving, pool.map(read, moving)))
    return {i: fresh[i] if i in fresh else known[i] for i in ids}, unreadable


def by_product(views: dict[str, JobView | None]) -> dict[str, list[JobView]]:
    """The run's jobs grouped by product, in the order they were sent; a job without a product under ""."""
    groups: dict[str, list[JobView]] = {}
    for view in views.values():
        if view is not None:
            groups.setdefault(view.product or "", []).append(view)
    return groups


def zip_folders(views: list[JobView]) -> dict[str, JobView]:
    """A folder name for each of a product's jobs in its ZIP: the style's id, and the end of the job's id when
    another job has that style too (an id's start is its creation time: a batch's jobs share it)."""
    folders: dict[str, JobView] = {}
    for view in views:
        name = view.template or "own-prompt"
        folder = next(f for f in (name, f"{name}-{view.id[-8:]}", f"{name}-{view.id}") if f not in folders)
        folders[folder] = view
    return folders
