"""The background remover: rembg's real custom-model session on a tiny ONNX model, and its settings checks."""

import io
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from backend.errors import RateLimited, Unavailable
from backend.jobs.prepare import Preparer
from backend.place.cutout import MODEL_NAMES, BackgroundRemover, NothingFound, cut_out
from backend.storage import LocalStorage
from backend.tools.tiny import build_tiny_segmenter

REPO = Path(__file__).resolve().parents[3]
OBJECT = (120, 90, 279, 209)  # a 160×120 ellipse's box in a 400×300 photo


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return build_tiny_segmenter(tmp_path_factory.mktemp("anywhere") / "segmenter.onnx")


@pytest.fixture
def rembg_home(tmp_path, monkeypatch):
    """rembg's models folder, set somewhere that does not hold the model file."""
    home = tmp_path / "rembg-home"
    home.mkdir()
    monkeypatch.setenv("U2NET_HOME", str(home))
    monkeypatch.delenv("REMBG_HOME", raising=False)
    return home


def jpeg_photo() -> Image.Image:
    """A dark ellipse on white, passed through JPEG like a phone photo."""
    img = Image.new("RGB", (400, 300), "white")
    ImageDraw.Draw(img).ellipse(OBJECT, fill=(60, 40, 30))
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=85)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def test_rembg_alone_refuses_the_model_outside_its_home(model_file, rembg_home):
    from rembg import new_session

    with pytest.raises(ValueError, match="within the models directory"):
        new_session("u2net_custom", model_path=str(model_file))


def test_remover_mask_is_the_photos_size(model_file, rembg_home):
    photo = jpeg_photo()
    mask = BackgroundRemover(str(model_file))(photo)
    assert (mask.mode, mask.size) == ("L", photo.size)
    levels = np.asarray(mask)
    assert levels[150, 200] > 200 and levels[10, 10] < 30


def test_cut_out_through_rembg_matches_the_object(model_file, rembg_home):
    cut = cut_out(jpeg_photo(), BackgroundRemover(str(model_file)))
    width, height = OBJECT[2] - OBJECT[0] + 1, OBJECT[3] - OBJECT[1] + 1
    assert abs(cut.width - width) <= 4 and abs(cut.height - height) <= 4
    area = np.count_nonzero(np.asarray(cut.getchannel("A")) >= 128)
    assert area == pytest.approx(np.pi / 4 * width * height, rel=0.05)


def test_remover_leaves_rembg_home_and_environment_alone(model_file, rembg_home):
    BackgroundRemover(str(model_file))(jpeg_photo())
    assert list(rembg_home.iterdir()) == []
    assert os.environ["U2NET_HOME"] == str(rembg_home)


def test_cut_out_plain_white_photo_finds_nothing(model_file, rembg_home):
    with pytest.raises(NothingFound, match="no product was found"):
        cut_out(Image.new("RGB", (300, 200), "white"), BackgroundRemover(str(model_file)))


def test_cut_out_speck_on_white_finds_nothing(model_file, rembg_home):
    photo = Image.new("RGB", (200, 200), "white")
    photo.paste((0, 0, 0), (100, 100, 103, 103))
    with pytest.raises(NothingFound, match="foreground"):
        cut_out(photo, BackgroundRemover(str(model_file)))


def test_remover_reuses_its_session(model_file, rembg_home):
    remover = BackgroundRemover(str(model_file))
    remover(jpeg_photo())
    assert remover.session() is remover.session()


def test_remover_opens_its_session_once_across_threads(model_file):
    remover = BackgroundRemover(str(model_file))
    opened, start = [], threading.Barrier(4)

    def slow_open():
        time.sleep(0.05)  # as a real model's load would, give the other threads time to arrive
        opened.append(object())
        return opened[-1]

    remover._open = slow_open
    seen = []

    def use():
        start.wait()
        seen.append(remover.session())

    threads = [threading.Thread(target=use) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(opened) == 1 and all(session is opened[0] for session in seen)


def test_remover_missing_file(tmp_path):
    with pytest.raises(ValueError, match="BG_REMOVAL_MODEL names a model file that does not exist"):
        BackgroundRemover(str(tmp_path / "nope.onnx"))


def test_remover_file_that_is_not_onnx(tmp_path):
    (tmp_path / "model.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="BG_REMOVAL_MODEL must name an .onnx file"):
        BackgroundRemover(str(tmp_path / "model.bin"))


@pytest.mark.parametrize("name", ["birefnet-generl", "u2net_custom", "sam", "withoutbg"])
def test_remover_unknown_or_unusable_name(name):
    with pytest.raises(ValueError, match=f"BG_REMOVAL_MODEL must be one of .* got '{name}'"):
        BackgroundRemover(name)


def test_remover_corrupt_file_fails_on_first_use_naming_the_setting(tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    remover = BackgroundRemover(str(broken))
    with pytest.raises(Unavailable, match="BG_REMOVAL_MODEL=") as refused:  # a 503 with the reason, not a 500
        remover(Image.new("RGB", (8, 8)))
    assert refused.value.status_code == 503


def test_at_most_two_cut_outs_answer_requests_at_once_and_the_third_is_told_to_retry(tmp_path):
    entered, release = threading.Barrier(3), threading.Event()

    def slow_remover(rgb):
        if not release.is_set():
            entered.wait(5)
            release.wait(5)
        return Image.new("L", rgb.size, 255)

    preparer = Preparer(LocalStorage(tmp_path), "u2netp")
    preparer.remover = slow_remover
    photo = io.BytesIO()
    Image.radial_gradient("L").convert("RGB").save(photo, format="PNG")
    held = [threading.Thread(target=preparer.cut_out_now, args=(photo.getvalue(),)) for _ in range(2)]
    for t in held:
        t.start()
    entered.wait(5)  # both are inside the remover
    try:
        with pytest.raises(RateLimited, match="being cut out already") as refused:
            preparer.cut_out_now(photo.getvalue())
        assert refused.value.headers == {"Retry-After": "5"}
    finally:
        release.set()
        for t in held:
            t.join(5)
    assert preparer.cut_out_now(photo.getvalue()).mode == "RGBA", "free again once they are done"


def test_model_names_are_the_ones_rembg_can_open_by_name():
    from rembg.sessions import sessions

    usable = {name for name, cls in sessions.items()
              if cls.is_local() and not cls.requires_credentials() and not name.endswith("_custom")
              and name not in ("sam", "u2net_cloth_seg")}
    assert usable == MODEL_NAMES


def test_importing_place_loads_neither_rembg_nor_torch():
    code = ("import sys, backend.place.cutout, backend.place.composite, backend.place.layout; "
            "heavy = {'rembg', 'onnxruntime', 'torch'} & set(sys.modules); assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)
