"""A training as a worker runs it (backend.lora.worker_training), on the tiny model: a first training starts from
step 0 without a word of warning (there is nothing to resume, and that is normal); a training with a checkpoint in
storage resumes from it; the trainer still warns when it is told to resume and finds no checkpoint."""

import io
import logging

import pytest
from PIL import Image, ImageDraw

from backend.gpu.messages import TrainTask
from backend.lora.train import TrainSettings, parse_args, train
from backend.lora.worker_training import run_training
from backend.storage import LocalStorage

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def stored_photos(storage: LocalStorage) -> tuple[str, ...]:
    keys = []
    for i, colour in enumerate([(200, 30, 30), (30, 160, 60)]):
        img = Image.new("RGB", (48, 40), (235, 235, 230))
        ImageDraw.Draw(img).ellipse((6 + 4 * i, 4, 34 + 4 * i, 36), fill=colour)
        out = io.BytesIO()
        img.save(out, format="PNG")
        keys.append(f"products/bottle/photos/{i}.png")
        storage.put(keys[-1], out.getvalue(), "image/png")
    return tuple(keys)


def task(keys: tuple[str, ...], steps: int) -> TrainTask:
    return TrainTask(task_id=1, training_id="t" * 32, trigger="sks bottle", photo_keys=keys, steps=steps, rank=4,
                     resolution=32, checkpoint_every=2)


def warnings_in(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_first_training_starts_from_step_0_without_a_warning(tiny_model, tmp_path, caplog):
    storage = LocalStorage(tmp_path / "storage")
    with caplog.at_level(logging.INFO):
        info = run_training(str(tiny_model), storage, "cpu", task(stored_photos(storage), 2), tmp_path / "work",
                            lambda step, steps, loss: None)
    assert info["resumed_from"] is None
    assert warnings_in(caplog) == []
    assert info["device"] == "cpu" and 0 < info["step_s"] < 60, ("the speed the app's next estimate is made of", info)


def test_a_training_with_a_checkpoint_in_storage_resumes_from_it(tiny_model, tmp_path, caplog):
    storage = LocalStorage(tmp_path / "storage")
    keys = stored_photos(storage)
    with caplog.at_level(logging.INFO):
        run_training(str(tiny_model), storage, "cpu", task(keys, 4), tmp_path / "work", lambda *_: None, until=2)
        info = run_training(str(tiny_model), storage, "cpu", task(keys, 4), tmp_path / "work", lambda *_: None)
    assert info["resumed_from"] == 2
    assert warnings_in(caplog) == []


def test_the_trainer_told_to_resume_warns_when_it_finds_no_checkpoint(tiny_model, tmp_path, caplog):
    storage = LocalStorage(tmp_path / "storage")
    stored_photos(storage)
    args = parse_args(["--images", str(storage.root / "products/bottle/photos"), "--trigger", "sks bottle",
                       "--output", str(tmp_path / "out" / "l.safetensors"), "--model", str(tiny_model), "--steps", "1",
                       "--resolution", "32", "--rank", "4", "--quiet", "--resume"], TrainSettings())
    with caplog.at_level(logging.INFO):
        assert train(args).start_step == 0
    assert any("no checkpoint" in w for w in warnings_in(caplog))
