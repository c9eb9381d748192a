"""S3Storage against a real S3 server (SeaweedFS): what the local store's unit tests cannot show."""

import uuid

import pytest

from backend.storage import ObjectMissing
from tests.conftest import open_test_storage, s3_env


def test_get_head_is_a_range_read(s3):
    """A LoRA's header is read without its body (the Products page decides on the download from it): S3 answers
    the range, not the whole object."""
    store = open_test_storage(s3_env(s3, f"head-{uuid.uuid4().hex[:8]}"))
    body = bytes(range(256)) * 4096  # 1 MiB
    store.put("products/a.safetensors", body)
    assert store.get_head("products/a.safetensors", 8) == body[:8]
    assert store.get_head("products/a.safetensors", 5000) == body[:5000]
    assert store.get_head("products/a.safetensors", 10 ** 9) == body
    with pytest.raises(ObjectMissing):
        store.get_head("products/none.safetensors", 8)
