"""The small typed messages between the scheduler (parent) and the GPU worker processes."""

from dataclasses import dataclass, field


@dataclass(frozen=True)
class LoraTask:
    name: str       # catalog name; the adapter cache is keyed by name and content version
    weight: float
    key: str        # storage key of the canonical .safetensors file


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


@dataclass(frozen=True)
class UpscaleTask:
    task_id: int
    source_key: str
    target_key: str


@dataclass(frozen=True)
class Stop:
    pass


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
    """The task is over: every image in it was reported done or failed, or it was canceled."""
    task_id: int
    canceled: bool = False
    seconds: float = 0.0
