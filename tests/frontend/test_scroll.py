"""What comes first on a phone and what a click brings on screen (views/scroll.py), under AppTest: a job
opened by its link is marked to come before the form, History's Open shows the job and Reuse the form, Use
these settings shows the form, a product opened from the list shows the product, and a finished job has no
empty column beside its status (a blank row once stacked). The browser test (test_phone_browser.py)
checks what the marks and scripts do on a 390 x 844 screen."""

import json
import uuid

from backend.storage import LocalStorage
from tests.factories import packshot
from tests.frontend.conftest import SMALL, assert_no_exception, frontend_env, offline_url, page_text
from tests.frontend.test_results import stored_manifest


def scroll_targets(at) -> list[str]:
    """The parts the page was asked to bring on screen in this run, by their CSS selectors."""
    scripts = [str(h.value) for h in at.get("html") if "scrollIntoView" in str(h.value)]
    return [s.split("document.querySelector('")[1].split("'")[0] for s in scripts]


def has_key(at, key: str) -> bool:
    try:
        at.get_by_key(key)
    except KeyError:
        return False
    return True


def offline_app(open_app, tmp_path, job: str | None = None):
    return open_app({"BACKEND_URL": offline_url(), "STORAGE_URL": f"file://{tmp_path}"}, job=job)


def test_a_job_link_puts_the_pictures_before_the_form_on_a_phone(tmp_path, open_app):
    job_id = uuid.uuid4().hex
    stored_manifest(LocalStorage(tmp_path), job_id, ["succeeded", "queued"])
    at = offline_app(open_app, tmp_path, job=job_id)
    assert_no_exception(at)
    first = at.get_by_key("job-first")  # the mark the stylesheet orders first on a narrow screen
    assert first.get_by_key("job-status") and has_key(at, "compose-form")
    assert not scroll_targets(at), "a link opens at the top of the page: nothing to scroll to"

    at = offline_app(open_app, tmp_path)
    assert not has_key(at, "job-first") and has_key(at, "job-none"), "no job: the form comes first"


def test_history_open_shows_the_job_and_reuse_shows_the_form(tmp_path, open_app):
    job_id = uuid.uuid4().hex
    stored_manifest(LocalStorage(tmp_path), job_id, ["succeeded"])
    at = offline_app(open_app, tmp_path)
    at.switch_page("app_pages/history.py").run()
    at.button(key=f"open-{job_id}").click().run()
    assert_no_exception(at)
    assert at.query_params.get("job") == job_id and has_key(at, "job-first")
    assert scroll_targets(at) == [".st-key-job-status"], "Open far down History: the job's status on screen"
    at.switch_page("app_pages/create.py").run()  # AppTest reruns the page it last switched to, not the app's
    assert has_key(at, "job-first") and not scroll_targets(at), "once: later runs leave the page where it is"

    at.switch_page("app_pages/history.py").run()
    at.button(key=f"reuse-{job_id}").click().run()
    assert_no_exception(at)
    assert scroll_targets(at) == [".st-key-compose-form"], "Reuse: the form, which a phone puts under the pictures"


def test_use_these_settings_shows_the_form_and_says_where_the_job_is_in_any_layout(backend, open_app):
    job = backend.wait_job(backend.submit({"prompt": "a kettle", "num_images": 1, **SMALL})["id"])
    at = open_app(frontend_env(backend), job=job["id"])
    at.button(key="job-reuse").click().run()
    assert_no_exception(at)
    assert scroll_targets(at) == [".st-key-compose-form"]
    note = next(i.value for i in at.info if "The form holds" in i.value)
    assert "on the right" not in note, "a phone shows the job above the form, not on its right"


def test_a_scroll_asked_for_a_job_that_is_gone_is_not_kept_for_a_later_one(tmp_path, open_app):
    storage = LocalStorage(tmp_path)
    gone, other = sorted(uuid.uuid4().hex for _ in range(2))
    for job_id in (gone, other):
        stored_manifest(storage, job_id, ["succeeded"])
    at = offline_app(open_app, tmp_path)
    at.switch_page("app_pages/history.py").run()
    storage.delete(f"jobs/{gone}/job.json")  # deleted elsewhere while History was on screen
    at.button(key=f"open-{gone}").click().run()
    assert_no_exception(at)
    assert f"No job {gone} was found" in page_text(at)
    at.query_params["job"] = other
    at.switch_page("app_pages/create.py").run()
    assert at.get_by_key("job-status") and not scroll_targets(at), "no jump asked for long ago"


def stored_product(tmp_path, name: str) -> None:
    storage = LocalStorage(tmp_path)
    storage.put(f"products/{name}.png", packshot(), "image/png")
    record = {"name": name, "trigger": "qzv jar", "category": "jar", "weight": 1.0, "has_lora": False,
              "packshot_key": f"products/{name}.png", "training": None}
    storage.put(f"products/{name}.json", json.dumps(record).encode(), "application/json")


def test_a_product_opened_from_the_list_comes_first_and_add_another_shows_the_form(tmp_path, open_app):
    names = [f"jar-{n}" for n in range(3)]
    for name in names:
        stored_product(tmp_path, name)
    at = offline_app(open_app, tmp_path)
    at.switch_page("app_pages/products.py").run()
    assert not has_key(at, "product-open")
    at.button(key=f"open-product-{names[2]}").click().run()
    assert_no_exception(at)
    assert at.query_params.get("product") == names[2], page_text(at)
    assert at.get_by_key("product-open").get_by_key("add-another"), "the open product is marked to come first"
    assert scroll_targets(at) == [".st-key-product-open"], "a card far down the list: the product on screen"
    at.button(key="add-another").click().run()
    assert_no_exception(at)
    assert scroll_targets(at) == [".st-key-product-form"], "the form, after the list on a phone"


def test_a_finished_jobs_status_has_no_empty_column_for_cancel(tmp_path, open_app):
    """A phone stacks columns: the empty one beside a finished job's status was a blank row above its prompt."""
    storage = LocalStorage(tmp_path)
    done, running = sorted(uuid.uuid4().hex for _ in range(2))
    stored_manifest(storage, done, ["succeeded"])
    stored_manifest(storage, running, ["running", "queued"])
    at = offline_app(open_app, tmp_path, job=done)
    status = at.get_by_key("job-status")
    assert not status.get("column") and " of 1 ready" in page_text(at)
    at = offline_app(open_app, tmp_path, job=running)
    status = at.get_by_key("job-status")
    assert len(status.get("column")) == 2 and status.button(key="cancel-job"), "Cancel beside the status"
