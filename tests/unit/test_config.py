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


@pytest.mark.parametrize("key", [" the-api-key-0123456789", "the-api-key-0123456789\n", "'the-api-key-0123456789'x y",
                                 "the-api-kéy-0123456789"])
def test_an_api_key_no_client_could_send_is_refused_without_printing_it(monkeypatch, key):
    monkeypatch.setenv("API_KEY", key)
    with pytest.raises(SettingsError) as refused:
        get_settings()
    assert "API_KEY must be printable ASCII with no spaces" in str(refused.value)
    assert "0123456789" not in str(refused.value)


def test_a_public_box_refuses_a_short_api_key_and_takes_a_long_one(monkeypatch):
    monkeypatch.setenv("PUBLIC_BIND", "true")
    monkeypatch.setenv("API_KEY", "secret-123")
    with pytest.raises(SettingsError) as refused:
        get_settings()
    assert "API_KEY is shorter than 16 characters" in str(refused.value) and "secret-123" not in str(refused.value)
    get_settings.cache_clear()
    monkeypatch.setenv("API_KEY", "a-long-enough-key-0123456789")
    assert get_settings().api_key.get_secret_value() == "a-long-enough-key-0123456789"
    monkeypatch.delenv("PUBLIC_BIND")
    monkeypatch.setenv("API_KEY", "short")
    get_settings.cache_clear()
    assert get_settings().api_key.get_secret_value() == "short", "on loopback a short key is the owner's business"


def test_an_api_key_wrapped_in_quotes_is_refused(monkeypatch):
    monkeypatch.setenv("API_KEY", '"the-api-key-0123456789"')  # docker's --env-file keeps them
    with pytest.raises(SettingsError) as refused:
        get_settings()
    assert "API_KEY is wrapped in quotes" in str(refused.value) and "0123456789" not in str(refused.value)


def test_node_lost_s_below_two_missed_heartbeats_is_refused(monkeypatch):
    """A node beats every 5 s: a shorter wait would send a busy node's task again while it still runs it."""
    monkeypatch.setenv("NODE_LOST_S", "8")
    with pytest.raises(SettingsError) as refused:
        get_settings()
    assert "NODE_LOST_S" in str(refused.value) and "12" in str(refused.value), str(refused.value)
    get_settings.cache_clear()
    monkeypatch.setenv("NODE_LOST_S", "15")
    assert get_settings().node_lost_s == 15
