"""New code on a running app server (a git push on Streamlit Community Cloud, an edit under `make run`): the kept
client and store are made again by the new code, whose `except` clauses name the new error classes."""

from frontend import client as client_module
from frontend import services


def test_the_kept_client_and_store_are_made_again_by_reloaded_code(monkeypatch, tmp_path):
    monkeypatch.setenv("BACKEND_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("STORAGE_URL", f"file://{tmp_path}")
    first, store = services.client(), services.storage()
    assert services.client() is first and services.storage() is store, "kept while the code stays"

    class BackendError(client_module.BackendError):  # what a reload makes: a class of the same name, not the same
        pass

    monkeypatch.setattr(services, "BackendError", BackendError)
    assert services.client() is not first and services.storage() is not store
