"""The small typed messages between the scheduler (parent) and a GPU worker process, one union per direction."""

from dataclasses import dataclass, field


@dataclass(frozen=True)
class LoraTask:
    name: str       # catalog name; the adapter cache is keyed by name and content version
    weight: float
    key: str        # storage key of the canonical .safetensors file


# ----- parent -> worker -----
@dataclass(frozen=True)
class Task:
    """Generate some images of one job as one batch."""
    task_id: int
    job_id: str
    indices: tuple[int, ...]
    seeds: tuple[int, ...]
    keys: tuple[str, ...]
    prompt: str
    negative_prompt: str
    steps: int
    guidance_scale: float
    width: int
    height: int
    strength: float
    input_key: str | None = None
    loras: tuple[LoraTask, ...] = ()
    meta: dict = field(default_factory=dict)  # written into the PNG text chunks
    mode: str = "generate"                    # generate, restyle or place
    layout_key: str | None = None             # place mode: the product layer, RGBA, width x height
    shadow: bool = True                       # place mode: a contact shadow under the product
    harmonize: bool = True                    # place mode: the product's edge takes a little of the scene's light
    reflection: float = 0.0                   # place mode: its mirror image on a glossy floor, this strong (0 = none)
    preview_keys: tuple[str, ...] = ()        # where a preview of each image goes while it sharpens


@dataclass(frozen=True)
class UpscaleTask:
    """Upscale one stored image 4x with the local upscaler, on this worker's GPU."""
    task_id: int
    source_key: str
    target_key: str


@dataclass(frozen=True)
class TrainTask:
    """Learn a product's LoRA from its photos (storage keys), resuming from the newest checkpoint stored
    under trainings/<id>/checkpoints/; the result goes to trainings/<id>/lora.safetensors."""
    task_id: int
    training_id: str
    trigger: str
    photo_keys: tuple[str, ...]
    steps: int
    rank: int
    resolution: int
    checkpoint_every: int
    seed: int = 0


@dataclass(frozen=True)
class Stop:
    pass


ToWorker = Task | UpscaleTask | TrainTask | Stop


# ----- worker -> parent -----
@dataclass(frozen=True)
class Ready:
    worker_id: int
    device: str
    native_size: int
    load_s: float


@dataclass(frozen=True)
class LoadFailed:
    worker_id: int
    error: str


@dataclass(frozen=True)
class Started:
    task_id: int


@dataclass(frozen=True)
class Progress:
    task_id: int
    step: int
    total: int
    loss: float | None = None  # a training's smoothed loss


@dataclass(frozen=True)
class Preview:
    """A preview of a running image was handed to storage at `key`."""
    task_id: int
    index: int
    key: str


@dataclass(frozen=True)
class ImageDone:
    task_id: int
    index: int


@dataclass(frozen=True)
class ImageFailed:
    task_id: int
    index: int
    error: str


@dataclass(frozen=True)
class Done:
    """The task is over: every image in it was reported done or failed, or it was canceled. For an
    UpscaleTask or a TrainTask, `error` is None when the result is stored."""
    task_id: int
    canceled: bool = False
    seconds: float = 0.0
    error: str | None = None
    info: dict = field(default_factory=dict)  # a training's outcome: resumed_from, probe_loss


FromWorker = Ready | LoadFailed | Started | Progress | Preview | ImageDone | ImageFailed | Done
