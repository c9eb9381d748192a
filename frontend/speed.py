"""How fast this generator has been, measured on the jobs it finished, and what its GPU time cost.

What the Create page says before Generate ("about 20 s") and a finished job after it ("8 s of GPU time,
$0.0017") come from here, not from a table of GPU models: the box it runs on, its model, its batch sizes and
its LoRAs are all in the figure. A job's GPU time is, for each worker, the time one of its images was being
made (a batch of four counts once, not four times), added over the workers. Its price needs GPU_HOUR_PRICE,
what one GPU costs an hour (vast.ai shows it on the instance); without it, only time is shown.
"""

import statistics
from dataclasses import dataclass
from datetime import datetime

from backend.contract import STANDARD_PIXELS, STANDARD_STEPS
from frontend.jobs import JobView, parse_time

RECENT = 20    # finished jobs a speed is measured on: recent enough to be this model and box
SCAN = 32      # the newest jobs looked at for them (failed and canceled ones are passed over, not read past)
MIN_JOBS = 2   # fewer say too little (the first after a start pays for loading a LoRA)


@dataclass(frozen=True)
class Speed:
    seconds_per_picture: float   # GPU seconds per standard picture (512 x 512, 30 steps), the median of the jobs
    jobs: int                    # how many jobs it was measured on
    mode: str | None             # measured on jobs of this mode only; None: of every mode


def gpu_seconds(job: JobView) -> float | None:
    """The job's GPU time: per worker, the union of its images' runs. None when an image has no times (not
    made, or a manifest from before they were written)."""
    runs: dict[str, list[tuple[datetime, datetime]]] = {}
    for img in job.images:
        start, end = parse_time(img.started_at), parse_time(img.finished_at)
        if start is None or end is None or end < start:
            return None
        runs.setdefault(img.worker or "?", []).append((start, end))
    if not runs:
        return None
    return sum(_covered(spans) for spans in runs.values())


def _covered(spans: list[tuple[datetime, datetime]]) -> float:
    """Seconds covered by at least one span: overlapping runs on one worker (a batch) count once."""
    total, reach = 0.0, None
    for start, end in sorted(spans):
        if reach is not None and start < reach:
            start = reach
        if end > start:
            total += (end - start).total_seconds()
        reach = end if reach is None else max(reach, end)
    return total


def work(width: int, height: int, steps: int, num_images: int) -> float:
    """What a job asks of the GPU in standard pictures, as it is: without the floor of one a picture the queue
    counts with (contract.image_cost), since a 64 x 64 picture or one of 20 steps takes less time than a standard
    one. A speed is measured, and an estimate made, with this."""
    return width * height / STANDARD_PIXELS * steps / STANDARD_STEPS * num_images


def per_picture(job: JobView) -> float | None:
    """GPU seconds per standard picture of one wholly finished job."""
    if job.status != "succeeded" or any(not img.done for img in job.images):
        return None
    seconds = gpu_seconds(job)
    try:
        asked = work(int(job.spec["width"]), int(job.spec["height"]), int(job.spec["steps"]), len(job.images))
    except (KeyError, TypeError, ValueError):
        return None
    return seconds / asked if seconds is not None and asked > 0 else None


def measured(jobs: list[JobView], mode: str | None = None) -> Speed | None:
    """The speed of the newest finished jobs (`jobs` newest first): of `mode` when enough of them were (a
    restyle at half strength runs half its steps; place paints a mask), else of all. None until MIN_JOBS."""
    rates = [(job.spec.get("mode"), rate) for job in jobs if (rate := per_picture(job)) is not None]
    same = [rate for m, rate in rates if m == mode][:RECENT] if mode else []
    if len(same) >= MIN_JOBS:
        return Speed(statistics.median(same), len(same), mode)
    every = [rate for _, rate in rates][:RECENT]
    if len(every) < MIN_JOBS:
        return None
    return Speed(statistics.median(every), len(every), None)


def wall_seconds(speed: Speed, asked: float, num_images: int, workers: int) -> float:
    """How long a job asking `asked` standard pictures (work()) takes once it starts: its images share the
    workers."""
    return asked * speed.seconds_per_picture / max(1, min(num_images, workers))


def estimate(measured: Speed, asked: float, num_images: int, workers: int, hour_price: float | None) -> str:
    """"about 20 s once it starts, $0.002": a job (or a catalog run) asking `asked` standard pictures (work())."""
    money = price(asked * measured.seconds_per_picture, hour_price)
    started = f"{about(wall_seconds(measured, asked, num_images, workers))} once it starts"
    return started + (f", {money}" if money else "")


def basis(measured: Speed, hour_price: float | None) -> str:
    """Where an estimate comes from, for its tooltip."""
    kind = f"{measured.mode} jobs" if measured.mode else "jobs"
    return (f"The time is measured on this generator's last {measured.jobs} finished {kind}"
            + (f"; the price is that GPU time at ${hour_price:g} an hour (GPU_HOUR_PRICE)." if hour_price else "."))


def price(gpu_s: float, hour_price: float | None) -> str | None:
    """GPU time in dollars ("$0.0017", "$1.24"), or None without an hourly price."""
    if not hour_price:
        return None
    dollars = gpu_s * hour_price / 3600
    if dollars >= 1:
        return f"${dollars:,.2f}"
    return f"${dollars:.2g}" if dollars >= 0.0001 else "under $0.0001"


def about(seconds: float) -> str:
    """A duration as an estimate reads: "under a second", "about 20 s", "about 3 min"."""
    if seconds < 1:
        return "under a second"
    if seconds < 60:
        return f"about {seconds:.0f} s"
    if seconds < 3600:
        return f"about {seconds / 60:.0f} min"
    return f"about {seconds / 3600:.1f} h".replace(".0 h", " h")
