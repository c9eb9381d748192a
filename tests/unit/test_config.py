"""Settings: one refused at start-up says which and why, never what was given (the log must not get a
secret); what `WORKERS=auto` comes to."""

import pytest

from backend.config import Settings, SettingsError, get_settings

KEY = "whsec_c2hvd3Jvb20tdGVzdC1zZWNyZXQta2V5LTEyMzQ="


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    get_settings.cache_clear()
    monkeypatch.chdir(tmp_path)  # no .env file of the repo's
    monkeypatch.setenv("STORAGE_URL", f"file://{tmp_path}")
    yield
    get_settings.cache_clear()


def test_a_webhook_secret_with_a_stray_space_is_refused_without_printing_it(monkeypatch):
    monkeypatch.setenv("WEBHOOK_SECRET", KEY + " ")
    with pytest.raises(SettingsError) as refused:
        get_settings()
    assert "WEBHOOK_SECRET: WEBHOOK_SECRET must be 'whsec_' followed by base64" in str(refused.value)
    assert KEY[8:20] not in str(refused.value)


def test_a_refusal_about_several_settings_quotes_none_of_them(monkeypatch):
    monkeypatch.setenv("IDLE_STOP_MINUTES", "5")
    monkeypatch.setenv("CONTAINER_API_KEY", "vast-container-key-0123456789abcdef")
    monkeypatch.setenv("API_KEY", "the-api-key-0123456789")
    with pytest.raises(SettingsError) as refused:
        get_settings()
    assert "IDLE_STOP_MINUTES needs CONTAINER_ID and CONTAINER_API_KEY" in str(refused.value)
    assert "0123456789" not in str(refused.value) and "input" not in str(refused.value)


@pytest.mark.parametrize("device, workers, gpus, expected", [
    ("auto", "auto", 4, 4), ("cuda", "auto", 2, 2), ("auto", "auto", 0, 1),
    ("cpu", "auto", 4, 1),  # the GPUs are there but not used: one process on the CPU, not one per GPU
    ("mps", "auto", 0, 1), ("cpu", "3", 4, 3),
])
def test_workers_auto_is_one_per_gpu_only_where_gpus_are_used(device, workers, gpus, expected):
    settings = Settings(device=device, workers=workers)
    assert settings.worker_count(gpus) == expected
