"""backend.gpu.celery_app.celery_config: what the Celery app is told, from the settings."""

import ssl

from backend.config import Settings
from backend.gpu.celery_app import celery_config, longest_task_s


def config(url: str) -> dict:
    return celery_config(Settings(executor="celery", broker_url=url, model_id="m", storage_url="file:///tmp/x"))


def test_a_tls_broker_has_its_certificate_checked_unless_the_url_says_otherwise():
    assert config("rediss://:pw@broker.example.com:6380/0")["broker_use_ssl"] == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    assert "broker_use_ssl" not in config("rediss://:pw@broker.example.com:6380/0?ssl_cert_reqs=required")
    assert "broker_use_ssl" not in config("redis://:pw@127.0.0.1:6379/0")


def test_the_broker_redelivers_only_after_the_longest_task_could_have_ended():
    settings = Settings(executor="celery", broker_url="redis://:pw@127.0.0.1:6379/0", model_id="m",
                        storage_url="file:///tmp/x")
    visibility = celery_config(settings)["broker_transport_options"]["visibility_timeout"]
    assert visibility > longest_task_s(settings) == settings.image_timeout_s * settings.max_batch
