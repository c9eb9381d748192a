"""The seam between the job side and whatever makes the images.

An executor takes jobs, runs their images on GPUs and reports what happens as small typed events;
it never writes a manifest. `backend.jobs.events` applies the events to the manifest store. The local
`Scheduler` (this box's GPUs, one worker process each) is one executor; GPU nodes pulling work over
a broker are another. The job service, the upscale service, start-up recovery and the routes use
nothing but these verbs.
"""

from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from backend.gpu import messages
from backend.gpu.messages import TrainTask
from backend.models import JobManifest


# ----- events, executor -> job side -----
@dataclass(frozen=True)
class ImagesStarted:
    job_id: str
    indices: tuple[int, ...]
    worker: int | str


@dataclass(frozen=True)
class ImagesProgress:
    job_id: str
    indices: tuple[int, ...]
    step: int
    steps: int


@dataclass(frozen=True)
class ImagePreview:
    job_id: str
    index: int
    key: str


@dataclass(frozen=True)
class ImageSucceeded:
    job_id: str
    index: int


@dataclass(frozen=True)
class ImageFailed:
    job_id: str
    index: int
    error: str


@dataclass(frozen=True)
class ImagesRequeued:
    """A worker was lost; these images wait for another."""
    job_id: str
    indices: tuple[int, ...]


@dataclass(frozen=True)
class ImagesCanceled:
    job_id: str
    indices: tuple[int, ...]


@dataclass(frozen=True)
class BatchFinished:
    seconds: float
    images: int


@dataclass(frozen=True)
class WorkerReady:
    worker: int | str
    load_s: float


@dataclass(frozen=True)
class TrainingEvent:
    training_id: str


@dataclass(frozen=True)
class TrainingStarted(TrainingEvent):
    worker: int | str


@dataclass(frozen=True)
class TrainingProgress(TrainingEvent):
    step: int
    steps: int
    loss: float | None


@dataclass(frozen=True)
class TrainingRequeued(TrainingEvent):
    reason: str


@dataclass(frozen=True)
class TrainingSucceeded(TrainingEvent):
    info: dict


@dataclass(frozen=True)
class TrainingFailed(TrainingEvent):
    error: str


Event = (ImagesStarted | ImagesProgress | ImagePreview | ImageSucceeded | ImageFailed | ImagesRequeued | ImagesCanceled
         | BatchFinished | WorkerReady | TrainingEvent)
EventSink = Callable[[Event], None]


def training_timed_out(limit_s: float) -> str:
    """Why a training past TRAINING_TIMEOUT_S failed, in the same words whichever executor stopped it."""
    return f"timed out after {limit_s:.0f} s (TRAINING_TIMEOUT_S={limit_s:g})"


def image_event(msg, task, worker: int | str) -> Event | None:
    """What a worker's message about a batch of images means as an event (None for the other messages):
    the one translation, used by the local scheduler and by GPU nodes."""
    match msg:
        case messages.Started():
            return ImagesStarted(task.job_id, task.indices, worker)
        case messages.Progress(step=step, total=total):
            return ImagesProgress(task.job_id, task.indices, step, total)
        case messages.Preview(index=index, key=key):
            return ImagePreview(task.job_id, index, key)
        case messages.ImageDone(index=index):
            return ImageSucceeded(task.job_id, index)
        case messages.ImageFailed(index=index, error=error):
            return ImageFailed(task.job_id, index, error)
    return None


@runtime_checkable
class Executor(Protocol):
    native_size: int | None  # the model's native size, once a worker has loaded it

    def start(self) -> None: ...

    def stop(self, timeout: float = 10) -> None: ...

    def submit(self, job: JobManifest, loras: tuple) -> None:
        """Run the job's queued images; their manifest is already in storage."""

    def cancel(self, job_id: str) -> bool:
        """Drop the job's waiting images (reported canceled) and interrupt its running ones; False when
        it holds no such job."""

    def holds(self, job_id: str) -> bool:
        """True while some image of the job is waiting or running here."""

    def upscale(self, source_key: str, target_key: str) -> Future:
        """Run the local upscaler on one of its GPUs; the future ends when the result is stored."""

    def train(self, task: TrainTask) -> None:
        """Queue a LoRA training (its task_id is assigned here); it runs on one GPU at a time and reports
        Training* events; a worker lost mid-way is replaced and the training resumes from its checkpoint."""

    def stop_training(self, training_id: str, reason: str) -> None:
        """Drop the training if it waits, stop it at its next step if it runs; it ends TrainingFailed with
        `reason`. Nothing when this executor does not have it."""

    def pending_images(self) -> int: ...

    def pending_cost(self) -> float:
        """The work waiting, in 512 x 512, 30-step images (ResolvedSpec.image_cost): what the queue bounds."""

    def hopeless(self) -> bool:
        """True when no worker can ever start: new jobs are refused instead of queued forever."""

    def last_error(self) -> str: ...

    def snapshot(self) -> dict:
        """For /health and /metrics, without waiting on storage: {"workers": [{"id", "device", "state"}],
        "errors": [str], "pending": int, "native_size": int | None}."""
