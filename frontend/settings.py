"""The one settings reader: each name from `st.secrets` first, then the environment.

Secret values never reach a log or the page: the dataclass hides them from its repr.
"""

import os
from dataclasses import dataclass, field

import streamlit as st

DEFAULT_BACKEND_URL = "http://localhost:8000"


@dataclass(frozen=True)
class Settings:
    backend_url: str = DEFAULT_BACKEND_URL
    api_key: str | None = field(default=None, repr=False)
    storage_url: str | None = None
    s3_endpoint_url: str | None = None
    aws_access_key_id: str | None = field(default=None, repr=False)
    aws_secret_access_key: str | None = field(default=None, repr=False)
    aws_region: str | None = None
    app_password: str | None = field(default=None, repr=False)
    gpu_hour_price: float | None = None   # dollars one GPU costs an hour: what a job's GPU time is priced at

    @property
    def storage_args(self) -> tuple:
        """What opens the store; also the cache key of the opened store."""
        return (self.storage_url, self.s3_endpoint_url, self.aws_access_key_id, self.aws_secret_access_key,
                self.aws_region)


class SecretsUnreadable(RuntimeError):
    """A secrets file exists but cannot be parsed: the app refuses to open rather than run without
    the password (APP_PASSWORD) that file may hold."""


def _has_secrets() -> bool:
    if st.secrets.load_if_toml_exists():
        return True
    # False also when a file exists but is broken: tell that apart from "no secrets file".
    broken = [p for p in st.get_option("secrets.files") if p.endswith(".toml") and os.path.isfile(p)]
    if broken:
        raise SecretsUnreadable(f"the secrets file {broken[0]} cannot be read (is it valid TOML?); "
                                "fix it or remove it")
    return False


def _read(name: str) -> str | None:
    """A secret of that name if the app has secrets, else the environment; blank counts as unset."""
    value = None
    if _has_secrets():
        value = st.secrets.get(name)
    if value is None:
        value = os.environ.get(name)
    value = str(value).strip() if value is not None else None
    return value or None


def load_settings() -> Settings:
    return Settings(
        backend_url=(_read("BACKEND_URL") or DEFAULT_BACKEND_URL).rstrip("/"),
        api_key=_read("API_KEY"),
        storage_url=_read("STORAGE_URL"),
        s3_endpoint_url=_read("S3_ENDPOINT_URL"),
        aws_access_key_id=_read("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=_read("AWS_SECRET_ACCESS_KEY"),
        aws_region=_read("AWS_REGION"),
        app_password=_read("APP_PASSWORD"),
        gpu_hour_price=_price(_read("GPU_HOUR_PRICE")),
    )


def _price(value: str | None) -> float | None:
    """GPU_HOUR_PRICE as dollars ("0.45" or "$0.45"); anything else, or 0, shows no prices rather than wrong ones."""
    try:
        dollars = float((value or "").strip().lstrip("$"))
    except ValueError:
        return None
    return dollars if 0 < dollars < 1000 else None
