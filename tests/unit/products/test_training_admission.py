"""Which trainings a backend takes: one at a time per product, AT_ONCE in all; the rest are told why. And
what a finished one leaves: the LoRA goes to its product, unless the product was deleted meanwhile.
Real storage, catalog and manifest store; the executor is a fake that records what it is sent."""

import io
import threading
import time

import pytest
from PIL import Image

from backend.config import Settings
from backend.errors import Conflict, InvalidRequest, NotFound, RateLimited
from backend.gpu import executor as ev
from backend.jobs.manifests import TRAININGS, ManifestStore
from backend.lora.safetensors_file import read_safetensors, read_safetensors_header, write_safetensors
from backend.models import Product
from backend.products import training as tr
from backend.products.catalog import Catalog
from backend.storage import LocalStorage
from tests.factories import make_lora, png_bytes


class Recorder:
    def __init__(self):
        self.sent, self.stopped = [], []

    def train(self, task):
        self.sent.append(task)

    def stop_training(self, training_id, reason):
        self.stopped.append((training_id, reason))


@pytest.fixture
def service(tmp_path):
    storage = LocalStorage(tmp_path)
    catalog, store = Catalog(storage), ManifestStore(storage, kind=TRAININGS).start()
    for n in range(tr.AT_ONCE + 1):
        catalog.add_product(Product(name=f"p{n}", trigger=f"zxq p{n}", has_lora=False))
    service = tr.TrainingService(Settings(storage_url=f"file://{tmp_path}"), catalog, store, Recorder(), lambda: 64)
    yield service
    service.close()
    store.close()


PHOTOS = [png_bytes(32, 32, (10 * n, 80, 120)) for n in range(2)]


def test_more_than_at_once_trainings_are_told_to_retry_and_a_finished_one_frees_a_place(service):
    started = [service.submit(f"p{n}", PHOTOS, 20, 4) for n in range(tr.AT_ONCE)]
    with pytest.raises(RateLimited, match=f"{tr.AT_ONCE} trainings are running or waiting") as refused:
        service.submit(f"p{tr.AT_ONCE}", PHOTOS, 20, 4)
    assert refused.value.headers["Retry-After"] and len(service.executor.sent) == tr.AT_ONCE
    service.on_event(ev.TrainingFailed(started[0].id, "a test"))
    assert service.submit(f"p{tr.AT_ONCE}", PHOTOS, 20, 4).product == f"p{tr.AT_ONCE}"


def test_a_training_keeps_its_photos_no_bigger_than_its_views_need(service, monkeypatch):
    monkeypatch.setattr(tr, "PHOTO_SHORT_SIDE", 40)
    big, small = png_bytes(120, 80, (200, 30, 30)), png_bytes(32, 48, (30, 30, 200))
    training = service.submit("p0", [big, small], 20, 4)
    sizes = [Image.open(io.BytesIO(service.storage.get(tr.photo_key(training.id, n)))).size for n in range(2)]
    assert sizes == [(60, 40), (32, 48)], "the short side brought down to the limit, aspect kept; a small one as is"


def test_two_trainings_of_one_product_at_the_same_moment_start_once(service):
    outcomes, start = [], threading.Barrier(4)

    def submit():
        start.wait(5)
        try:
            outcomes.append(service.submit("p0", PHOTOS, 20, 4).id)
        except InvalidRequest as e:
            outcomes.append(e.detail)

    threads = [threading.Thread(target=submit) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(service.executor.sent) == 1, outcomes
    assert sum("being trained already" in o for o in outcomes) == 3


def _finished(service, training_id: str, lora: bytes) -> None:
    """The executor says the training ended, with its LoRA stored where a worker stores it."""
    service.storage.put(tr.lora_result_key(training_id), lora, "application/octet-stream")
    service.on_event(ev.TrainingSucceeded(training_id, {}))
    service._finishing.submit(lambda: None).result(30)  # the adoption runs on this pool: wait for it


def test_a_finished_training_gives_its_product_the_lora(service, tiny_model):
    training = service.submit("p0", PHOTOS, 20, 4)
    _finished(service, training.id, make_lora(tiny_model, seed=1))
    assert service.store.get(training.id).status.value == "succeeded"
    assert service.catalog.product("p0").has_lora and service.storage.exists(tr.lora_key("p0"))


def test_a_trained_products_lora_keeps_what_the_trained_file_says(service, tiny_model):
    """The upload check writes the loader's keys and keeps the trainer's modelspec.* and ss_* keys (trigger, base
    model, rank, steps...), titled with the product, and nothing else of the file's."""
    tensors, _ = read_safetensors(make_lora(tiny_model, seed=1))
    said = {"modelspec.trigger_phrase": "zxq p0", "modelspec.title": "lora", "ss_network_dim": "4",
            "ss_output_name": "lora", "showroom_lora": "0", "trained_in": "/home/alice/work"}
    training = service.submit("p0", PHOTOS, 20, 4)
    _finished(service, training.id, write_safetensors(tensors, said))
    assert service.store.get(training.id).status.value == "succeeded"
    _, about, _ = read_safetensors_header(service.storage.get(tr.lora_key("p0")))
    assert about == {"format": "pt", "showroom_lora": "1", "source_format": "diffusers",
                     "modelspec.trigger_phrase": "zxq p0", "modelspec.title": "p0", "ss_output_name": "p0",
                     "ss_network_dim": "4"}


def test_a_product_deleted_while_it_trained_gets_no_lora_back(service, tiny_model):
    training = service.submit("p0", PHOTOS, 20, 4)
    service.catalog.delete("p0")
    _finished(service, training.id, make_lora(tiny_model, seed=1))
    ended = service.store.get(training.id)
    assert ended.status.value == "failed" and "deleted while it trained" in ended.error, ended
    assert not service.storage.exists(tr.lora_key("p0")), "the deleted product's LoRA came back"


def test_a_product_deleted_and_added_again_while_its_old_training_ran_keeps_its_own_lora(service, tiny_model):
    """The owner deletes a product mid-training and adds a new one under the same name, with a LoRA of its own:
    the old training's result must not overwrite the new product's LoRA (nor give it one it was not trained for)."""
    training = service.submit("p0", PHOTOS, 20, 4)
    service.catalog.delete("p0")
    own = make_lora(tiny_model, seed=2)
    service.catalog.add_product(Product(name="p0", trigger="a different thing"), lora=own)
    _finished(service, training.id, make_lora(tiny_model, seed=1))
    ended = service.store.get(training.id)
    assert ended.status.value == "failed" and "deleted while it trained" in ended.error, ended
    assert service.storage.get(tr.lora_key("p0")) == own, "the old training's LoRA replaced the new product's"


def test_a_product_deleted_and_added_again_while_its_old_training_ran_gets_no_lora_from_it(service, tiny_model):
    training = service.submit("p0", PHOTOS, 20, 4)
    service.catalog.delete("p0")
    service.catalog.add_product(Product(name="p0", trigger="a different thing", has_lora=False))
    _finished(service, training.id, make_lora(tiny_model, seed=1))
    assert service.store.get(training.id).status.value == "failed"
    assert not service.catalog.product("p0").has_lora and not service.storage.exists(tr.lora_key("p0"))


def test_after_a_restart_a_training_whose_product_was_deleted_and_added_again_is_not_resumed(service, tmp_path):
    """A restart finds a training left running; its product was deleted and added again under its name since:
    the new product is not the one photographed, so the training is failed, not run for hours on the GPU."""
    training = service.submit("p0", PHOTOS, 20, 4)
    service.catalog.delete("p0")
    service.catalog.add_product(Product(name="p0", trigger="a different thing", has_lora=False))
    service.store.flush()
    later = tr.TrainingService(service.settings, service.catalog, service.store, Recorder(), lambda: 64)
    try:
        assert later.resume_unfinished(booted_us=time.time_ns() // 1000) == 0
        assert later.executor.sent == []
        ended = service.store.get(training.id)
        assert ended.status.value == "failed" and "deleted" in ended.error, ended
    finally:
        later.close()


def test_a_product_deleted_while_its_training_is_submitted_leaves_no_training_waiting_for_ever(service):
    """DELETE /v1/products/{name} landing while a training's manifest is written: the client is told the
    product is gone, and the training it was not given is not left queued with nothing to run it."""
    create = service.store.create

    def create_then_delete(training):
        written = create(training)
        service.catalog.delete("p0")  # the owner removes the product from another tab
        return written

    service.store.create = create_then_delete
    with pytest.raises(NotFound, match="p0"):
        service.submit("p0", PHOTOS, 20, 4)
    assert service.executor.sent == []
    service.store.flush()
    left = [service.store.get(i) for i in service.store.ids()]
    assert left and all(t.status.is_terminal() for t in left), left


def test_a_finished_training_starts_test_pictures_of_its_product_and_a_full_queue_costs_only_them(service,
                                                                                                 tiny_model):
    """Once the product has its LoRA, four test pictures of it are started (their job id in the manifest), so the
    owner sees what it learnt without asking; a queue that refuses them leaves the training succeeded."""
    asked = []

    def start(product: str) -> str:
        asked.append((product, service.catalog.product(product).has_lora))
        return "0" * 32

    service.start_check = start
    first = service.submit("p0", PHOTOS, 20, 4)
    _finished(service, first.id, make_lora(tiny_model, seed=1))
    assert asked == [("p0", True)], "started after the LoRA is the product's, so the pictures use it"
    assert service.store.get(first.id).check_job == "0" * 32

    def refuse(product: str) -> str:
        raise RateLimited("the queue is full")

    service.start_check = refuse
    second = service.submit("p1", PHOTOS, 20, 4)
    _finished(service, second.id, make_lora(tiny_model, seed=2))
    done = service.store.get(second.id)
    assert done.status.value == "succeeded" and done.check_job is None and service.catalog.product("p1").has_lora


def test_a_finished_training_records_the_speed_its_worker_measured(service, tiny_model):
    training = service.submit("p0", PHOTOS, 20, 4)
    service.storage.put(tr.lora_result_key(training.id), make_lora(tiny_model, seed=1), "application/octet-stream")
    service.on_event(ev.TrainingSucceeded(training.id, {"step_s": 0.52, "device": "cuda"}))
    service._finishing.submit(lambda: None).result(30)
    done = service.store.get(training.id)
    assert (done.status.value, done.step_s, done.device) == ("succeeded", 0.52, "cuda")


def test_a_product_taught_again_keeps_showing_the_test_pictures_of_the_lora_it_has(service, tiny_model):
    """While it learns again, and after that fails or is stopped, the product still has its first LoRA: each later
    training names that LoRA's test pictures, until one succeeds and has its own."""
    checks = iter(["1" * 32, "2" * 32])
    service.start_check = lambda product: next(checks)
    assert service.submit("p0", PHOTOS, 20, 4).earlier_check_job is None, "nothing learnt yet: no pictures"
    _finished(service, service.catalog.product("p0").training, make_lora(tiny_model, seed=1))
    second = service.submit("p0", PHOTOS, 20, 4)
    assert second.earlier_check_job == "1" * 32
    service.on_event(ev.TrainingFailed(second.id, "a test"))
    service.store.flush()
    third = service.submit("p0", PHOTOS, 20, 4)
    assert third.earlier_check_job == "1" * 32, "carried over the failed training"
    _finished(service, third.id, make_lora(tiny_model, seed=2))
    assert service.submit("p0", PHOTOS, 20, 4).earlier_check_job == "2" * 32


def test_the_test_pictures_are_four_studio_shots_of_the_product():
    """The same pictures the app's "Make 4 test pictures" asks for: the studio template where the generator has it."""
    from backend.contract import check_spec

    assert check_spec("mug", {"studio-white": 1, "beach": 2}) == {"product": "mug", "num_images": 4,
                                                                   "mode": "generate", "template": "studio-white"}
    assert check_spec("mug", ["beach"])["prompt"].startswith("<product>, centered product shot")


def test_its_owner_stops_a_training_and_may_teach_the_product_again(service, tiny_model):
    """Cancel: the training ends canceled at once (what its worker still reports changes nothing), its GPU is told
    to stop, the product stays as it was, and it can be taught again; a training that ended is answered as it is."""
    training = service.submit("p0", PHOTOS, 20, 4)
    stopped = service.cancel(training.id)
    assert (stopped.status.value, stopped.error) == ("canceled", tr.STOPPED_BY_OWNER)
    assert service.executor.stopped == [(training.id, tr.STOPPED_BY_OWNER)]
    service.on_event(ev.TrainingFailed(training.id, "stopped at step 3"))
    _finished(service, training.id, make_lora(tiny_model, seed=1))  # a last report that it finished: too late
    ended = service.store.get(training.id)
    assert ended.status.value == "canceled" and not service.catalog.product("p0").has_lora
    assert service.cancel(training.id).status.value == "canceled" and len(service.executor.stopped) == 1
    again = service.submit("p0", PHOTOS, 20, 4)
    assert again.status.value == "queued", "a canceled training does not hold its product"
    with pytest.raises(NotFound):
        service.cancel("0" * 32)


def test_a_training_this_backend_does_not_run_is_not_canceled_here(service):
    """Another backend on the bucket runs it and writes its manifest: stopping it here would be overwritten."""
    training = service.submit("p0", PHOTOS, 20, 4)
    service._active.pop(training.id)  # as if an earlier run, or another backend, had started it
    with pytest.raises(Conflict, match="another backend"):
        service.cancel(training.id)
    assert service.store.get(training.id).status.value == "queued" and service.executor.stopped == []
