"""The Catalog page: products x styles x pictures sent as batches, counted and costed before they are sent,
refusals in words that name the product and the style, and one grid that fills as the pictures land."""

import io
import json
import re
import uuid
import zipfile

import pytest

from backend.contract import new_job_id
from backend.models import ResolvedSpec
from backend.storage import LocalStorage, StorageError
from frontend import catalog_run, cost, downloads, services
from frontend.client import BackendError, BackendOffline
from frontend.jobs import ImageView, JobView, load_job
from tests.factories import packshot
from tests.frontend.conftest import (
    assert_no_exception,
    frontend_env,
    page_text,
    placeholder_tiles,
    run_until,
    shown_images,
)
from tests.frontend.test_scroll import scroll_targets

CATALOG_PAGE = "app_pages/catalog.py"
PLACE_STYLES = ["studio-white", "marble-countertop"]  # both made for placing a product's photo


def entry(product: str = "mug", style: str = "Studio", num_images: int = 2) -> catalog_run.Entry:
    spec = {"product": product, "template": "studio-white", "num_images": num_images, "width": 64, "height": 64,
            "mode": "place"}
    return catalog_run.Entry(product, style, spec, float(num_images))


class FakeClient:
    """Answers POST /v1/batches with tickets, or refuses the n-th batch."""

    def __init__(self, refuse_batch: int | None = None, error: BackendError | None = None):
        self.sizes, self.refuse_batch, self.error = [], refuse_batch, error

    def submit_batch(self, specs: list[dict]) -> dict:
        self.sizes.append(len(specs))
        if len(self.sizes) == self.refuse_batch:
            raise self.error
        return {"jobs": [{"id": uuid.uuid4().hex} for _ in specs]}


# ----- counting, cost and sending, without a backend -----

@pytest.mark.parametrize(("width", "height", "steps", "each"), [(64, 64, 2, 1.0), (512, 512, 30, 1.0),
                                                                (1024, 1024, 30, 4.0), (768, 512, 45, 2.25),
                                                                (2048, 2048, 150, 80.0)])
def test_the_page_counts_cost_as_the_backend_does(width, height, steps, each):
    spec = ResolvedSpec(prompt="a", negative_prompt="", product=None, template=None, loras=[], num_images=3,
                        steps=steps, guidance_scale=7.5, width=width, height=height, seed=1, strength=0.5)
    assert cost.image_cost(width, height, steps) == spec.image_cost == each
    assert cost.job_cost(width, height, steps, 3) == spec.cost == round(3 * each, 2)


def test_a_plan_is_every_product_in_every_style_with_its_cost():
    products = [{"name": "mug", "packshot_key": "products/mug.png"}, {"name": "scarf", "packshot_key": None}]
    templates = [{"id": "studio-white", "name": "Studio", "steps": 30, "modes": ["generate", "place"]},
                 {"id": "street", "name": "Street", "steps": 45, "modes": ["generate", "restyle"]}]
    plan = catalog_run.plan(products, templates, 4, 1024, 1024, None, exact=True)
    assert [(e.product, e.spec["template"], e.spec["mode"]) for e in plan.entries] == [
        ("mug", "studio-white", "place"), ("mug", "street", "generate"),   # a style not made for placing draws it
        ("scarf", "studio-white", "generate"), ("scarf", "street", "generate")]  # no photo: drawn
    assert plan.jobs == 4 and plan.images == 16 and plan.batches == 1
    assert [e.cost for e in plan.entries] == [16.0, 24.0, 16.0, 24.0], "1024² counts 4, 45 steps 1.5 times more"
    assert plan.cost == 80.0 and "steps" not in plan.entries[0].spec, "each style keeps its own steps"
    assert [e.label for e in plan.too_big()] == [], "24 is within the default limit of 128"
    assert [e.spec["steps"] for e in catalog_run.plan(products, templates, 4, 512, 512, 2, True).entries] == [2] * 4
    assert [t["id"] for t in catalog_run.styles_for(templates, exact=True)] == ["studio-white"]


def test_a_run_is_never_bigger_than_its_link_can_carry():
    templates = [{"id": f"style-{i}", "name": f"Style {i}", "steps": 30, "modes": ["generate"]} for i in range(40)]

    def plan(products: int) -> catalog_run.Plan:
        return catalog_run.plan([{"name": f"p{i}", "packshot_key": None} for i in range(products)], templates, 1,
                                512, 512, None, exact=False)

    assert plan(12).jobs == 480 and plan(12).too_many, "480 jobs: a link of 400 would lose 80 of them"
    fits = plan(10)
    assert fits.jobs == catalog_run.MAX_RUN_JOBS and not fits.too_many
    outcome = catalog_run.send(FakeClient(), fits.entries)
    assert catalog_run.ids_from_url(catalog_run.ids_to_url(outcome.job_ids)) == outcome.job_ids, \
        "every job of the biggest run allowed stays in its link"


def test_more_than_50_jobs_go_as_batches_in_order():
    client = FakeClient()
    outcome = catalog_run.send(client, [entry(f"p{i}") for i in range(120)])
    assert client.sizes == [50, 50, 20] and len(outcome.job_ids) == 120
    assert outcome.refusal is None and outcome.left == []


def test_a_refused_batch_stops_the_run_and_keeps_the_rest_to_send():
    entries = [entry(f"p{i}") for i in range(60)]
    busy = BackendError("the queue cannot take 20 more images; send a smaller batch or try again shortly", 429)
    outcome = catalog_run.send(FakeClient(refuse_batch=2, error=busy), entries)
    assert len(outcome.job_ids) == 50 and outcome.left == entries[50:]
    assert outcome.refusal.startswith("The first 50 of 60 jobs were started. The other 10 were not. The generator "
                                      "is too busy to take 20 more pictures right now"), outcome.refusal


def test_a_spec_refused_by_a_schema_rule_is_named_by_its_product_and_style():
    chunk = [entry("mug"), entry("scarf", "Street")]
    schema = BackendError("jobs[1].width: Input should be less than or equal to 2048", 422)
    assert catalog_run.refusal_words(schema, chunk, 0, 2) == (
        "Nothing in this batch was started: the job for scarf in the style “Street” was refused, because "
        "width: Input should be less than or equal to 2048.")


def test_an_unanswered_batch_may_have_started():
    offline = BackendOffline("the backend at http://x did not answer in time")
    outcome = catalog_run.send(FakeClient(refuse_batch=1, error=offline), [entry()])
    assert outcome.job_ids == [] and "may or may not have started: look in History" in outcome.refusal


def test_a_run_link_keeps_only_job_ids():
    good = [uuid.uuid4().hex for _ in range(3)]
    link = catalog_run.ids_to_url(good)
    assert "," not in link and "%" not in link, "nothing a browser would encode"
    assert catalog_run.ids_from_url(f"{link}.<script>,{good[0]},") == good, "junk dropped, repeats once"
    assert catalog_run.ids_from_url(None) == []


class DownStorage:
    """Storage that does not answer: every read fails."""

    def get(self, key):
        raise StorageError("timed out")

    list_files = exists = get


def test_the_grid_reads_again_only_what_still_moves():
    done_id, moving_id, unknown_id = (uuid.uuid4().hex for _ in range(3))
    image = ImageView(index=0, key=f"jobs/{done_id}/0.png", seed=1, status="succeeded")
    done = JobView(done_id, "succeeded", "a cup", None, None, 64, 64, [image])
    running = JobView(moving_id, "running", "a cup", None, None, 64, 64, [ImageView(0, "k", 1, "running")])
    views, unreadable = catalog_run.refresh(DownStorage(), [done_id, moving_id, unknown_id],
                                            {done_id: done, moving_id: running})
    assert views == {done_id: done, moving_id: running, unknown_id: None}, "the last view kept while storage is down"
    assert unreadable == {moving_id, unknown_id}, "a finished job is not read again"


def stored_job(storage, template: str = "studio-white", images: int = 2) -> JobView:
    """A finished job written to storage as the backend writes it: its manifest and its PNGs."""
    job_id = new_job_id()
    records = [{"index": i, "key": f"jobs/{job_id}/{i}.png", "seed": i, "status": "succeeded"} for i in range(images)]
    manifest = {"id": job_id, "status": "succeeded", "spec": {"prompt": "a mug", "product": "mug",
                                                               "template": template}, "images": records}
    storage.put(f"jobs/{job_id}/job.json", json.dumps(manifest).encode(), "application/json")
    for record in records:
        storage.put(record["key"], packshot(), "image/png")
    return load_job(storage, job_id)


def test_a_product_zip_leaves_out_a_job_deleted_since_the_grid_read_it(tmp_path):
    """The grid keeps a finished job's view and does not read it again; deleted since (History's Delete, another
    device), it must not make the whole product's ZIP fail."""
    storage = LocalStorage(tmp_path)
    kept, deleted = stored_job(storage, "studio-white"), stored_job(storage, "marble-countertop")
    for key in storage.list_files(f"jobs/{deleted.id}/"):
        storage.delete(key)
    data = downloads.jobs_zip(storage, catalog_run.zip_folders([kept, deleted]))
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert sorted(archive.namelist()) == sorted(
            [f"studio-white/{downloads.file_stem(kept, i)}.png" for i in range(2)] + ["studio-white/job.json"])


def test_each_job_of_a_product_keeps_its_own_folder_in_the_zip(tmp_path):
    """Three jobs of one product in one style (a run's last batch sent again after no answer, twice): made in one
    second, their ids share their first 8 characters, and a folder named by them held only the last job."""
    storage = LocalStorage(tmp_path)
    views = [stored_job(storage) for _ in range(3)]
    folders = catalog_run.zip_folders(views)
    assert len(folders) == 3 and sorted(v.id for v in folders.values()) == sorted(v.id for v in views)
    with zipfile.ZipFile(io.BytesIO(downloads.jobs_zip(storage, folders))) as archive:
        assert sum(name.endswith(".png") for name in archive.namelist()) == 6


# ----- the backend's own refusals, in words -----

def refusal_of(backend, specs: list[dict]) -> BackendError:
    r = backend.post("/v1/batches", json={"jobs": specs})
    assert r.status_code in (422, 429), r.text
    return BackendError(r.json()["detail"], r.status_code)


def test_a_job_over_the_cost_limit_is_named_in_plain_words(backend):
    small = {"prompt": "a cup", "num_images": 1, "steps": 2, "width": 64, "height": 64}
    huge = {"prompt": "a cup", "num_images": 2, "steps": 150, "width": 2048, "height": 2048}
    error = refusal_of(backend, [small, huge])
    chunk = [entry("mug", "Studio"), entry("scarf", "Marble")]
    words = catalog_run.refusal_words(error, chunk, sent=0, total=2)
    assert words == ("Nothing in this batch was started: the job for scarf in the style “Marble” was refused, "
                     "because it is 160 standard pictures of work and the generator takes at most 128 standard "
                     "pictures in one job. Choose fewer pictures for each product and style, a smaller shape or "
                     "fewer steps."), words


def test_a_batch_the_queue_cannot_take_is_explained(backend):
    heavy = {"prompt": "a cup", "num_images": 16, "steps": 60, "width": 512, "height": 512}  # 32 each
    error = refusal_of(backend, [heavy] * 10)
    assert error.status == 429
    words = catalog_run.refusal_words(error, [entry(num_images=16)] * 10, sent=0, total=10)
    assert words.startswith("The generator is too busy to take 160 more pictures right now, so none of them were "
                             "started."), words


# ----- the page, against the real backend -----

def add_products(backend, count: int) -> list[str]:
    names = []
    for n in range(count):
        name = f"cat-{uuid.uuid4().hex[:6]}-{n}"
        r = backend.post("/v1/products", data={"name": name, "trigger": f"qz{n} bottle", "category": "bottles"},
                         files={"photo": (f"{name}.png", packshot(), "image/png")})
        assert r.status_code == 201, r.text
        names.append(name)
    return names


def open_catalog(open_app, backend, jobs: str | None = None, **env):
    at = open_app(frontend_env(backend, **env))
    if jobs:
        at.query_params["jobs"] = jobs
    at.switch_page(CATALOG_PAGE).run()
    assert_no_exception(at)
    return at


def job_ids(backend) -> set[str]:
    return {job["id"] for job in backend.get("/v1/jobs?limit=200").json()["jobs"]}


def test_two_products_in_two_styles_fill_one_grid(backend, open_app):
    names = add_products(backend, 2)
    at = open_catalog(open_app, backend)
    assert at.button(key="catalog-submit").disabled, "nothing picked: nothing to make"
    at.multiselect(key="catalog_products").set_value(names)
    at.multiselect(key="catalog_styles").set_value(PLACE_STYLES)
    at.slider(key="catalog_num").set_value(2).run()
    text = page_text(at)
    assert "2 products × 2 styles × 2 pictures = 8 pictures**, in 4 jobs of 64 × 64" in text, text
    assert "Cost: 8 standard pictures of work" in text, "64 × 64 pictures count 1 each (the least a picture counts)"
    assert at.button(key="catalog-submit").label == "Make 8 pictures"
    at.number_input(key="catalog_steps").set_value(2)
    at.button(key="catalog-submit").click().run()
    assert_no_exception(at)
    assert scroll_targets(at) == [".st-key-catalog-head"], "the button is far down the picker: the grid on screen"

    ids = catalog_run.ids_from_url(at.query_params.get("jobs"))
    assert len(ids) == 4, page_text(at)
    shown = 8 + len(names)  # and each product's packshot beside its name
    run_until(at, lambda a: shown_images(a) == shown and "8 of 8 pictures ready" in page_text(a), timeout=180,
              what="all 8 pictures in the grid")
    assert placeholder_tiles(at) == 0
    specs = [backend.get(f"/v1/jobs/{i}").json()["spec"] for i in ids]
    assert [(s["product"], s["template"]) for s in specs] == [(n, t) for n in names for t in PLACE_STYLES]
    assert {(s["mode"], s["steps"], s["num_images"]) for s in specs} == {("place", 2, 2)}
    blocks = [m.value for m in at.markdown if any(f"**{n}**" in str(m.value) for n in names)]
    assert [n for b in blocks for n in names if f"**{n}**" in b] == names, "one block per product, in order"
    assert {b.key for b in at.download_button} == {"catalog-zip-0", "catalog-zip-1"}, "a ZIP per product"

    again = open_catalog(open_app, backend, jobs=at.query_params["jobs"])  # a reload, or the link elsewhere
    assert shown_images(again) == shown and "8 of 8 pictures ready" in page_text(again)

    again.button(key=f"catalog-open-{ids[0]}").click().run()  # one job full size, on the Create page
    assert again.query_params.get("job") == ids[0] and shown_images(again) == 2

    views = [load_job(backend.storage, i) for i in ids[:2]]  # the first product's jobs, as its ZIP holds them
    with zipfile.ZipFile(io.BytesIO(downloads.jobs_zip(backend.storage, catalog_run.zip_folders(views)))) as z:
        pngs = sorted(n for n in z.namelist() if n.endswith(".png"))
        assert [n.split("/")[0] for n in pngs] == ["marble-countertop"] * 2 + ["studio-white"] * 2, pngs
        assert json.loads(z.read("studio-white/job.json"))["id"] == ids[0]

    # those four place jobs are measured: the next run is timed and priced before it is sent
    priced = open_catalog(open_app, backend, GPU_HOUR_PRICE="0.6")
    priced.multiselect(key="catalog_products").set_value(names)
    priced.multiselect(key="catalog_styles").set_value(PLACE_STYLES)
    priced.slider(key="catalog_num").set_value(2).run()
    line = next(str(m.value) for m in priced.markdown if 'id="catalog-cost"' in str(m.value))
    assert re.search(r"Cost: 8 standard pictures of work \((under a second|about \d+ (s|min)) once it starts, "
                     r"(\$[0-9.]+|under \$0\.0001)\)\.", line), line


def test_the_pictures_proportions_have_one_name_on_the_catalog_and_create_pages(backend, open_app):
    add_products(backend, 1)
    at = open_catalog(open_app, backend)
    on_catalog = at.segmented_control(key="catalog_shape")
    at.switch_page("app_pages/create.py").run()
    assert_no_exception(at)
    on_create = at.pills(key="aspect")
    assert (on_catalog.label, on_create.label) == ("Shape", "Shape"), "a shop owner's word, not a painter's Canvas"
    assert on_catalog.help == on_create.help and "proportions" in on_create.help
    at.radio(key="mode").set_value("restyle").run()
    helps = " ".join(w.help or "" for w in [*at.file_uploader, *at.slider, *at.pills])
    assert "fill the picture" in helps and "canvas" not in helps.lower(), "nor the word in the help beside it"


def test_a_run_past_the_links_limit_is_refused_before_anything_is_sent(backend, open_app, monkeypatch):
    monkeypatch.setattr(catalog_run, "MAX_RUN_JOBS", 3)  # 2 products × 2 styles make 4 jobs
    names = add_products(backend, 2)
    at = open_catalog(open_app, backend)
    at.multiselect(key="catalog_products").set_value(names)
    at.multiselect(key="catalog_styles").set_value(PLACE_STYLES).run()
    assert_no_exception(at)
    (said,) = [e.value for e in at.error if "One run makes at most" in e.value]
    assert "at most 3 jobs, and this is 4" in said, said
    assert at.button(key="catalog-submit").disabled, "a run bigger than its link would lose jobs from its grid"
    at.multiselect(key="catalog_styles").set_value(PLACE_STYLES[:1]).run()
    assert not [e for e in at.error if "One run makes at most" in e.value]
    assert not at.button(key="catalog-submit").disabled


def test_a_refused_batch_says_which_product_and_style_and_starts_nothing(backend, open_app, monkeypatch):
    (name,) = add_products(backend, 1)
    real = services.current_catalog
    retired = {"id": "retired-style", "name": "Retired style", "category": "general", "steps": 2,
               "modes": ["generate", "place"]}
    # a style the page still lists but the generator no longer offers (removed since the page loaded)
    monkeypatch.setattr(services, "current_catalog", lambda: real() | {"templates": [*real()["templates"], retired]})
    before = job_ids(backend)
    at = open_catalog(open_app, backend)
    at.multiselect(key="catalog_products").set_value([name])
    at.multiselect(key="catalog_styles").set_value(["studio-white", "retired-style"])
    at.number_input(key="catalog_steps").set_value(2).run()
    assert "1 product × 2 styles × 4 pictures = 8 pictures" in page_text(at)
    at.button(key="catalog-submit").click().run()
    assert_no_exception(at)
    expected = (f"Nothing in this batch was started: the job for {name} in the style “Retired style” was refused, "
                "because the generator does not offer this style any more. Reload the page and pick the styles again.")
    assert [e.value for e in at.error] == [expected]
    assert not at.query_params.get("jobs") and shown_images(at) == 0
    assert job_ids(backend) == before, "admitted whole or not at all: the good spec was not queued either"


def test_stop_says_what_it_stops_and_offers_the_pictures_not_made_again(backend, open_app):
    (name,) = add_products(backend, 1)
    slow = {"product": name, "template": "studio-white", "num_images": 16, "steps": 150, "width": 128,
            "height": 128, "mode": "place"}
    r = backend.post("/v1/batches", json={"jobs": [slow, slow]})
    assert r.status_code == 202, r.text
    ids = [ticket["id"] for ticket in r.json()["jobs"]]
    at = open_catalog(open_app, backend, jobs=catalog_run.ids_to_url(ids))
    assert " of 32 pictures ready" in page_text(at), page_text(at)
    stop = at.button(key="catalog-stop")
    assert stop.label == "Stop" and "those being drawn now stop too" in stop.help, "it read 'Stop the rest'"
    stop.click().run()
    assert_no_exception(at)
    assert [backend.wait_job(i, timeout=60)["status"] for i in ids] == ["canceled", "canceled"]
    run_until(at, lambda a: not [b for b in a.button if b.key == "catalog-stop"], what="nothing left to stop")
    manifests = [backend.get(f"/v1/jobs/{i}").json() for i in ids]
    not_made = [sum(img["status"] == "canceled" for img in m["images"]) for m in manifests]
    again = at.button(key="catalog-again")
    assert again.label == f"Make the {sum(not_made)} pictures not made", again.label
    again.click().run()
    assert_no_exception(at)
    run = catalog_run.ids_from_url(at.query_params.get("jobs"))
    kept = [i for i, m in zip(ids, manifests) if any(img["status"] == "succeeded" for img in m["images"])]
    new = run[len(kept):]
    try:
        assert run[:len(kept)] == kept, "a stopped job that made pictures stays in the grid; one that made none goes"
        specs = [backend.get(f"/v1/jobs/{i}").json()["spec"] for i in new]
        assert [(s["product"], s["template"], s["mode"], s["steps"], s["width"]) for s in specs] == \
            [(name, "studio-white", "place", 150, 128)] * 2
        assert [s["num_images"] for s in specs] == not_made
        assert not [b for b in at.button if b.key == "catalog-again"], "offered once"
    finally:
        for job_id in new:
            backend.post(f"/v1/jobs/{job_id}/cancel")  # the shared backend is free for the next test


def test_steps_the_generator_would_refuse_are_said_and_nothing_is_sent(backend, open_app):
    (name,) = add_products(backend, 1)
    at = open_catalog(open_app, backend)
    at.multiselect(key="catalog_products").set_value([name])
    at.multiselect(key="catalog_styles").set_value(PLACE_STYLES).run()
    assert "at each style's own steps (30 to 35)" in page_text(at), "what is sent when the field is left empty"
    steps = at.number_input(key="catalog_steps")
    assert steps.min is None and steps.max is None, \
        "a browser keeps a value outside the field's range to itself: the page went on with each style's own steps"
    before = job_ids(backend)
    for typed in (200, 0):
        at.number_input(key="catalog_steps").set_value(typed).run()
        assert_no_exception(at)
        said = [e.value for e in at.error if "Steps go from 1 to 150" in e.value]
        assert said == [f"Steps go from 1 to 150, and the field under Advanced settings says {typed}. Change it, "
                        "or empty it to use each style's own."], [e.value for e in at.error]
        make = at.button(key="catalog-submit")
        assert make.disabled and "Steps go from 1 to 150" in make.help, "never sent as something else"
        assert "each style's own steps (" not in page_text(at)
    at.number_input(key="catalog_steps").set_value(20).run()
    assert "at 20 steps" in page_text(at) and not at.button(key="catalog-submit").disabled
    assert not [e for e in at.error if "Steps go from" in e.value]
    assert job_ids(backend) == before


def test_products_showroom_has_not_learnt_are_named_before_they_are_drawn(backend, open_app, monkeypatch):
    names = add_products(backend, 3)  # each from a photo, none taught
    learnt = names[2]
    real = services.current_catalog
    monkeypatch.setattr(services, "current_catalog", lambda: real() | {"products": [
        p | {"has_lora": p["name"] == learnt} for p in real()["products"]]})
    at = open_catalog(open_app, backend)
    at.radio(key="catalog_look").set_value("drawn").run()
    at.multiselect(key="catalog_products").set_value(names)
    at.multiselect(key="catalog_styles").set_value(["studio-white", "art-watercolour"]).run()
    assert_no_exception(at)
    (said,) = [w.value for w in at.warning if "has not learnt" in w.value]
    assert said.startswith(f"**Showroom has not learnt {names[0]} and {names[1]} yet.** Drawn, each comes from its "
                           "name alone: a product like yours, not yours."), said
    assert learnt not in said
    assert not at.button(key="catalog-submit").disabled, "the owner may want them drawn all the same"
    (note,) = [c.value for c in at.caption if "placed too" in c.value]
    assert learnt in note and "Watercolour" in note, "what else the switch changes is said before it"
    at.button(key="catalog-place-instead").click().run()
    assert_no_exception(at)
    assert at.radio(key="catalog_look").value == "exact"
    assert at.multiselect(key="catalog_products").value == names
    assert at.multiselect(key="catalog_styles").value == ["studio-white"], "watercolour is not made for placing"
    assert not [w for w in at.warning if "has not learnt" in w.value], "each has a photo: placed, nothing drawn"


def test_a_product_without_a_photo_or_a_lora_is_named_in_the_exact_look(backend, open_app, monkeypatch):
    (name,) = add_products(backend, 1)
    real = services.current_catalog
    monkeypatch.setattr(services, "current_catalog", lambda: real() | {"products": [
        p | {"packshot_key": None, "has_lora": False} if p["name"] == name else p for p in real()["products"]]})
    at = open_catalog(open_app, backend)
    at.multiselect(key="catalog_products").set_value([name])
    at.multiselect(key="catalog_styles").set_value(["studio-white"]).run()
    (said,) = [w.value for w in at.warning if "has not learnt" in w.value]
    assert said.startswith(f"**Showroom has not learnt {name} yet and has no photo of it.**"), said
    assert not [b for b in at.button if b.key == "catalog-place-instead"], "no photo to place"
