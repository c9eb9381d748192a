"""The one settings object. Names follow ../shared/CONTRACT.md; nothing else reads os.environ."""

import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from backend.ops.vast import VAST_API_URL

DEFAULT_MODEL_ID = "stable-diffusion-v1-5/stable-diffusion-v1-5"
DEFAULT_STORAGE_URL = f"file://{Path('data/storage').resolve()}"
REPLICATE_MODEL = "mv-lab/swin2sr"
LOCAL_UPSCALER_MODEL = "caidas/swin2SR-realworld-sr-x4-64-bsrgan-psnr"
MIN_PUBLIC_KEY = 16  # characters of API_KEY on a public box (PUBLIC_BIND): token_urlsafe(32) gives 43


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", case_sensitive=False)

    # --- contract names ---
    model_id: str = DEFAULT_MODEL_ID
    device: Literal["auto", "cuda", "cpu", "mps"] = "auto"
    workers: str = "auto"
    storage_url: str = DEFAULT_STORAGE_URL
    s3_endpoint_url: str | None = None
    aws_access_key_id: str | None = None
    aws_secret_access_key: SecretStr | None = None
    aws_region: str | None = None
    api_key: SecretStr | None = None
    upscaler: Literal["replicate", "local", "off"] | None = None
    replicate_api_token: SecretStr | None = None
    replicate_base_url: str | None = None
    executor: Literal["local", "celery"] = Field("local", description="local: this box's GPUs; celery: GPU nodes "
                                                 "anywhere pull work from BROKER_URL")
    broker_url: SecretStr | None = Field(None, description="Celery broker: redis://[:password@]host:port/db or rediss://")
    webhook_secret: SecretStr | None = Field(None, description="Standard Webhooks signing secret: whsec_ + base64")
    webhook_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="hosts webhooks may go to besides public addresses (comma-separated)")
    webhook_backoff_s: float = Field(5.0, gt=0, description="first retry delay of a failed webhook; doubles, "
                                     "at most 2 h apart, for about a day")
    bg_removal_model: str = Field("birefnet-general", description="place mode's background remover: a rembg "
                                  "model name or the path of an .onnx file in U2-Net's layout")

    # --- ours (documented in README) ---
    queue_max_images: int = Field(256, ge=1, description="work waiting in the queue before 429, counted in "
                                  "512x512 30-step images (a 1024x1024 image counts 4)")
    max_job_cost: float = Field(128, gt=0, description="the most work one job may ask for, in 512x512 30-step images")
    max_batch: int = Field(8, ge=1, description="most images of one job a worker generates as one batch")
    image_timeout_s: float = Field(600, gt=0, description="per-image time limit (scaled by batch size)")
    training_timeout_s: float = Field(3 * 3600, gt=0, description="the longest a LoRA training may run")
    node_lost_s: float = Field(30, ge=12, description="EXECUTOR=celery: a GPU node's task whose heartbeat (every 5 s) "
                               "has not changed for this long is sent again to another node")
    storage_retry_s: float = Field(60, ge=0, description="how long a worker retries writing an image to storage")
    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    max_upload_pixels: int = Field(40_000_000, ge=1024)
    max_lora_bytes: int = Field(1024 * 1024 * 1024, ge=1024)
    rate_limit_per_minute: int = Field(60, ge=0, description="job submissions per client per minute; 0 = off")
    cors_origins: list[str] = Field(default_factory=list)
    presign_ttl_s: int = Field(600, ge=10, le=7 * 24 * 3600)
    idle_stop_minutes: float = Field(0, ge=0, description="stop this vast.ai instance after N idle minutes; 0 = off")
    container_id: str | None = Field(None, description="set by vast.ai inside an instance: its id")
    container_api_key: SecretStr | None = Field(None, description="set by vast.ai: a key scoped to this instance")
    vast_api_url: str = VAST_API_URL
    replicate_model: str = REPLICATE_MODEL
    replicate_version: str | None = None
    replicate_task: str = "real_sr"
    local_upscaler_model: str = LOCAL_UPSCALER_MODEL
    inpaint_model_id: str = Field("", description="place mode: a dedicated inpainting checkpoint (diffusers layout, "
                                  "same family as MODEL_ID); empty = inpaint with MODEL_ID's own weights")
    compile: bool = Field(False, description="torch.compile the UNet on CUDA (slow first image, faster after)")
    taesd_id: str = Field("", description="decode with this tiny autoencoder (TAESD, e.g. madebyollin/taesd) "
                          "instead of the model's VAE: a faster, slightly softer decode; empty = the VAE")
    public_bind: bool = Field(False, description="set when the API is reachable from outside; then API_KEY is required")
    showroom_cache: Path = Field(Path("/tmp/showroom"), description="where workers keep downloaded LoRAs")
    cuda_visible_devices: str | None = Field(None, description="CUDA's own: WORKERS=auto counts only these GPUs")

    @field_validator("webhook_allowed_hosts", mode="before")
    @classmethod
    def _hosts(cls, value) -> list[str]:
        if isinstance(value, str):
            value = value.split(",")
        return [h.strip().lower() for h in value if h and h.strip()]

    @field_validator("api_key", "replicate_api_token", "aws_secret_access_key", mode="before")
    @classmethod
    def _blank_is_unset(cls, value):
        # API_KEY="" (as an env file leaves it) must not let anyone in with an empty bearer: blank = unset.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("api_key")
    @classmethod
    def _api_key(cls, value: SecretStr | None) -> SecretStr | None:
        # Clients send it as a bearer token in a header: a key with a space around it, or a character a header
        # cannot carry, could never be matched, and every client would be locked out with no word as to why.
        key = value.get_secret_value() if value is not None else ""
        if value is not None and not re.fullmatch(r"[\x21-\x7e]+", key):
            raise ValueError("API_KEY must be printable ASCII with no spaces (it travels in an HTTP header): "
                             "check for a stray space or quote around it")
        if len(key) >= 2 and key[0] == key[-1] and key[0] in "'\"":  # an env file read by a tool that keeps quotes
            raise ValueError("API_KEY is wrapped in quotes, which clients would not send: remove them")
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _webhook_secret(cls, value: SecretStr | None) -> SecretStr | None:
        import base64
        import binascii

        if value is None or not value.get_secret_value():
            return None
        secret = value.get_secret_value()
        try:
            if not secret.startswith("whsec_") or not base64.b64decode(secret[6:], validate=True):
                raise ValueError
        except (ValueError, binascii.Error):
            raise ValueError("WEBHOOK_SECRET must be 'whsec_' followed by base64 (Standard Webhooks)") from None
        return value

    @field_validator("workers")
    @classmethod
    def _workers(cls, value: str) -> str:
        value = value.strip().lower()
        if value != "auto" and not (value.isdigit() and 1 <= int(value) <= 64):
            raise ValueError(f"WORKERS must be 'auto' or a number from 1 to 64, got {value!r}")
        return value

    @field_validator("storage_url")
    @classmethod
    def _storage_url(cls, value: str) -> str:
        if not (value.startswith("s3://") or value.startswith("file:///")):
            raise ValueError(f"STORAGE_URL must be s3://bucket[/prefix] or file:///absolute/path, got {value!r}")
        if value.startswith("s3://") and not value[5:].split("/")[0]:
            raise ValueError(f"STORAGE_URL names no bucket: {value!r}")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _refuse_unsafe(self) -> "Settings":
        if self.storage_url.startswith("s3://") and bool(self.aws_access_key_id) != bool(self.aws_secret_access_key):
            raise ValueError("set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or neither (boto3's chain)")
        if self.public_bind and not self.api_key:
            raise ValueError("PUBLIC_BIND is set but API_KEY is not: set API_KEY, or anyone can spend your GPU")
        if self.public_bind and len(self.api_key.get_secret_value()) < MIN_PUBLIC_KEY:
            raise ValueError(f"API_KEY is shorter than {MIN_PUBLIC_KEY} characters, too easy to guess on a public box: "
                             "make one with python -c \"import secrets; print(secrets.token_urlsafe(32))\"")
        if self.idle_stop_minutes > 0 and not (self.container_id and self.container_api_key):
            raise ValueError("IDLE_STOP_MINUTES needs CONTAINER_ID and CONTAINER_API_KEY "
                             "(vast.ai sets them inside an instance)")
        if self.executor == "celery" and not self.broker_url:
            raise ValueError("EXECUTOR=celery needs BROKER_URL (redis://[:password@]host:port/db)")
        if self.upscaler == "replicate" and not self.replicate_api_token:
            raise ValueError("UPSCALER=replicate needs REPLICATE_API_TOKEN")
        return self

    @property
    def active_upscaler(self) -> str:
        if self.upscaler:
            return self.upscaler
        return "replicate" if self.replicate_api_token else "off"

    def open_storage(self):
        from backend.storage import open_storage

        secret = self.aws_secret_access_key.get_secret_value() if self.aws_secret_access_key else None
        return open_storage(self.storage_url, endpoint_url=self.s3_endpoint_url, access_key=self.aws_access_key_id,
                            secret_key=secret, region=self.aws_region)

    def worker_count(self, gpus: int) -> int:
        """WORKERS: a number, or `auto`: one per visible GPU, and one on the CPU (DEVICE=cpu or mps, or no GPU)."""
        if self.workers != "auto":
            return int(self.workers)
        return max(gpus, 1) if self.device in ("auto", "cuda") else 1


@lru_cache
def get_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as e:
        raise SettingsError(e) from None


class SettingsError(ValueError):
    """Settings refused at start-up, said without the values given: pydantic's own message quotes each
    input, and a key with a stray space (or a model-level error quoting every setting) would print a
    secret into the box's log."""

    def __init__(self, error: ValidationError):
        lines = [f"{'.'.join(str(part) for part in e['loc']).upper() or 'settings'}: "
                 f"{e['msg'].removeprefix('Value error, ')}" for e in error.errors(include_input=False)]
        super().__init__("the settings were refused:\n  " + "\n  ".join(lines))
