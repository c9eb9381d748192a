"""The documents of the contract: JobSpec, JobManifest and its lifecycle, catalog entries."""

from datetime import datetime, timezone
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from backend import contract
from backend.contract import Status, check_name, manifest_key, rollup, training_key

MAX_SEED = 2**53 - 1  # JSON-safe for every client


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class LoraRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    weight: float = Field(1.0, ge=-4, le=4)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name("LoRA", v)


def _multiple_of_8(name: str, v: int | None) -> int | None:
    if v is not None and v % 8:
        raise ValueError(f"{name} must be a multiple of 8, got {v}")
    return v


Mode = Literal["generate", "restyle", "place"]
WebhookEvent = Literal["job.started", "image.succeeded", "image.failed", "job.completed"]


class Placement(BaseModel):
    """`place` mode: the cut-out's box is centred at (x·width, y·height) and fitted, aspect kept, into
    scale·width × scale·height."""

    model_config = ConfigDict(extra="forbid")
    x: float = Field(0.5, ge=0, le=1)
    y: float = Field(0.55, ge=0, le=1)
    scale: float = Field(0.6, ge=0.05, le=1)


class JobSpec(BaseModel):
    """What a client asks for. Unset fields are filled from the template, then from defaults."""

    model_config = ConfigDict(extra="forbid")
    prompt: str | None = Field(None, max_length=4000)
    negative_prompt: str | None = Field(None, max_length=4000)
    product: str | None = None
    template: str | None = None
    loras: list[LoraRef] = Field(default_factory=list, max_length=8)
    num_images: int = Field(4, ge=1, le=16)
    steps: int | None = Field(None, ge=1, le=150)
    guidance_scale: float | None = Field(None, ge=0, le=30)
    width: int | None = Field(None, ge=64, le=2048)
    height: int | None = Field(None, ge=64, le=2048)
    seed: int | None = Field(None, ge=0, le=MAX_SEED - 16)
    strength: float | None = Field(None, ge=0, le=1)
    mode: Mode | None = None
    placement: Placement | None = None
    shadow: bool = Field(True, description="place mode: a soft contact shadow under the product")
    harmonize: bool = Field(True, description="place mode: the product's edge takes a little of the scene's light")
    reflection: float | None = Field(None, ge=0, le=1, description="place mode: the product mirrored on a glossy "
                                     "floor, this opaque at its base and fading below it (0.2-0.4 looks like polished "
                                     "stone; 0 = none); default: the template's, else 0")
    webhook: str | None = Field(None, max_length=2000, description="Standard Webhooks POSTs go to this http(s) URL")
    webhook_events: list[WebhookEvent] = Field(default_factory=lambda: ["job.completed"], max_length=4)

    @field_validator("width")
    @classmethod
    def _width(cls, v: int | None) -> int | None:
        return _multiple_of_8("width", v)

    @field_validator("height")
    @classmethod
    def _height(cls, v: int | None) -> int | None:
        return _multiple_of_8("height", v)

    @field_validator("product")
    @classmethod
    def _product(cls, v: str | None) -> str | None:
        return None if v is None else check_name("product", v)

    @field_validator("template")
    @classmethod
    def _template(cls, v: str | None) -> str | None:
        return None if v is None else check_name("template", v)


class ResolvedSpec(BaseModel):
    """A JobSpec with the template, the product and the defaults applied: exactly what is generated."""

    prompt: str
    negative_prompt: str
    product: str | None
    template: str | None
    loras: list[LoraRef]
    num_images: int
    steps: int
    guidance_scale: float
    width: int
    height: int
    seed: int
    strength: float
    mode: Mode = "generate"
    placement: Placement | None = None
    shadow: bool = True
    harmonize: bool = True
    reflection: float = 0.0
    webhook: str | None = None
    webhook_events: list[WebhookEvent] = ["job.completed"]

    @property
    def image_cost(self) -> float:
        """One image's work in standard pictures (backend.contract.image_cost): what MAX_JOB_COST and the
        queue's bound count."""
        return contract.image_cost(self.width, self.height, self.steps)

    @property
    def cost(self) -> float:
        return contract.job_cost(self.width, self.height, self.steps, self.num_images)


class UpscaleRecord(BaseModel):
    key: str
    status: Status = Status.queued
    error: str | None = None


class StepProgress(BaseModel):
    step: int
    steps: int


class ImageRecord(BaseModel):
    index: int
    key: str
    seed: int
    status: Status = Status.queued
    worker: int | str | None = None
    error: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    progress: StepProgress | None = None
    preview_key: str | None = None
    upscale: UpscaleRecord | None = None

    def started(self, worker: int | str) -> None:
        self.status, self.worker, self.started_at, self.error = Status.running, worker, now(), None
        self.progress = None

    def requeued(self) -> None:
        self.status, self.worker, self.started_at, self.progress = Status.queued, None, None, None

    def succeeded(self) -> None:
        self.status, self.finished_at = Status.succeeded, now()

    def failed(self, error: str) -> None:
        self.status, self.error, self.finished_at = Status.failed, error, now()

    def canceled(self) -> None:
        self.status, self.finished_at = Status.canceled, now()


class Product(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str
    trigger: str
    category: str | None = None
    weight: float = 1.0
    has_lora: bool = True            # records written before packshots existed always had a LoRA
    packshot_key: str | None = None  # products/<name>.png: its cut-out, placed by `place` jobs
    training: str | None = None      # the id of its latest training


class Template(BaseModel):
    id: str
    name: str
    category: str
    prompt: str
    negative_prompt: str
    steps: int
    guidance_scale: float
    strength: float
    modes: list[Mode] = ["generate", "restyle", "place"]  # the modes it suits
    reflection: float = Field(0.0, ge=0, le=1)  # place mode's floor reflection on this template's floor (0 = matte)


class JobTicketImage(BaseModel):
    index: int
    key: str
    seed: int


class JobTicket(BaseModel):
    id: str
    status: Status
    manifest_key: str
    images: list[JobTicketImage]


class JobManifest(BaseModel):
    id: str
    created_at: str
    updated_at: str
    status: Status
    spec: ResolvedSpec
    input_key: str | None
    layout_key: str | None = None
    error: str | None = None
    images: list[ImageRecord]

    @property
    def manifest_key(self) -> str:
        return manifest_key(self.id)

    @model_validator(mode="after")
    def _photo_means_restyle(self) -> "JobManifest":
        # Manifests written before modes existed: a job with a photo and no layout was a restyle.
        if self.input_key and not self.layout_key and self.spec.mode == "generate":
            self.spec.mode = "restyle"
        return self

    def refresh(self) -> None:
        """Derive the job's status from its images' and stamp the change."""
        self.status = rollup(img.status for img in self.images)
        failed = [img for img in self.images if img.status == Status.failed]
        if self.status == Status.failed:
            self.error = f"{len(failed)} of {len(self.images)} images failed: {failed[0].error}"
        self.updated_at = now()

    def ticket(self) -> JobTicket:
        return JobTicket(id=self.id, status=Status.queued, manifest_key=self.manifest_key,
                         images=[JobTicketImage(index=i.index, key=i.key, seed=i.seed) for i in self.images])


class TrainingManifest(BaseModel):
    """A product's LoRA being learnt from its photos (trainings/<id>/job.json)."""

    id: str
    product: str
    status: Status = Status.queued
    progress: StepProgress
    error: str | None = None
    created_at: str
    updated_at: str
    # ours, beside the contract's fields
    loss: float | None = None              # smoothed training loss at the last step reported
    photos: int = 0
    rank: int = 16
    resolution: int = 512
    resumed_from: int | None = None         # the checkpoint step a later attempt continued from
    check_job: str | None = None             # four test pictures of the product, started once it learnt
    earlier_check_job: str | None = None     # those of the LoRA the product had when this training started
    worker: int | str | None = None
    probe_loss: list[float] | None = None   # loss on the photos with fixed noise, before and after
    product_found: list[int] | None = None  # [photos where the product was found, photos]
    step_s: float | None = None             # seconds per step on its worker, loading and finding the product included
    device: str | None = None               # the kind of device it learnt on: cuda, mps or cpu

    @property
    def manifest_key(self) -> str:
        return training_key(self.id)

    def refresh(self) -> None:
        self.updated_at = now()
