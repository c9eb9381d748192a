"""The documents of the contract: JobSpec, JobManifest and its lifecycle, catalog entries."""

from datetime import datetime, timezone

from pydantic import BaseModel, ConfigDict, Field, field_validator

from backend.contract import Status, check_name, manifest_key, rollup

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


class UpscaleRecord(BaseModel):
    key: str
    status: Status = Status.queued
    error: str | None = None


class ImageRecord(BaseModel):
    index: int
    key: str
    seed: int
    status: Status = Status.queued
    worker: int | None = None
    error: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    upscale: UpscaleRecord | None = None

    def started(self, worker: int) -> None:
        self.status, self.worker, self.started_at, self.error = Status.running, worker, now(), None

    def requeued(self) -> None:
        self.status, self.worker, self.started_at = Status.queued, None, None

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


class Template(BaseModel):
    id: str
    name: str
    category: str
    prompt: str
    negative_prompt: str
    steps: int
    guidance_scale: float
    strength: float


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
    error: str | None = None
    images: list[ImageRecord]
    canceled_requested: bool = Field(False, exclude=True)

    @property
    def manifest_key(self) -> str:
        return manifest_key(self.id)

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
