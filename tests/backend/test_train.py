"""backend.lora.train on the tiny model, on CPU: it learns the photos, its LoRA loads and changes images, it resumes."""

import json
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file

import backend.lora.train
from backend.lora.formats import normalize_upload
from backend.lora.loading import load_lora_into
from backend.lora.safetensors_file import read_safetensors
from backend.lora.train import Trainer, TrainSettings, load_photos, main, parse_args, train, video_frames
from backend.lora.trainer import mixed_precision
from backend.lora.views import augment

pytestmark = pytest.mark.usefixtures("torch_one_thread")


SMALL = ["--resolution", "32", "--rank", "4", "--lr", "1e-2", "--quiet"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for i, colour in enumerate([(200, 30, 30), (30, 160, 60), (40, 40, 200)]):
        img = Image.new("RGB", (48, 40), (235, 235, 230))
        ImageDraw.Draw(img).ellipse((6 + 4 * i, 4, 34 + 4 * i, 36), fill=colour)
        img.save(folder / f"bottle_{i}.png")
    (folder / "bottle_0.txt").write_text("sks bottle on a table")
    return folder


def run(tiny_model: Path, photos: Path, output: Path, *extra: str):
    return train(parse_args(["--images", str(photos), "--trigger", "sks bottle", "--output", str(output),
                             "--model", str(tiny_model), *SMALL, *extra], TrainSettings()))


@pytest.fixture(scope="module")
def trained(tiny_model, photos, tmp_path_factory):
    return run(tiny_model, photos, tmp_path_factory.mktemp("out") / "bottle.safetensors",
               "--steps", "30", "--checkpoint-every", "0")


def test_training_lowers_the_loss_on_the_photos(trained):
    """Probe loss: the same photos with the same noise and timesteps, before the first and after the last step."""
    assert trained.end_step == 30 and len(trained.losses) == 30
    assert trained.probe_loss_after < 0.97 * trained.probe_loss_before, trained


def test_trained_lora_loads_and_changes_images(trained, tiny_model, tmp_path):
    from diffusers import StableDiffusionPipeline

    data = trained.output.read_bytes()
    tensors, _ = read_safetensors(data)
    assert tensors and all(k.startswith("unet.") and ".lora_" in k for k in tensors)
    (tmp_path / "p.safetensors").write_bytes(normalize_upload(data))
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)

    def draw():
        return pipe("a photo of sks bottle", num_inference_steps=2, height=64, width=64, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images[0]

    plain = draw()
    assert load_lora_into(pipe, tmp_path / "p.safetensors", "bottle") == []
    with_lora = draw()
    pipe.disable_lora()
    np.testing.assert_allclose(draw(), plain, atol=1e-5)
    assert np.abs(with_lora - plain).max() > 1e-3


def test_resume_continues_from_the_checkpoint(tiny_model, photos, tmp_path):
    """2 steps, then --resume to 4, equals 4 steps in one go: the step count and the optimizer state carry on."""
    straight = run(tiny_model, photos, tmp_path / "a" / "l.safetensors", "--steps", "4", "--checkpoint-every", "2")
    first = run(tiny_model, photos, tmp_path / "b" / "l.safetensors", "--steps", "2", "--checkpoint-every", "2")
    assert (first.start_step, first.end_step) == (0, 2)
    assert (tmp_path / "b" / "l-checkpoints" / "step-000002" / "state.json").is_file()
    resumed = run(tiny_model, photos, tmp_path / "b" / "l.safetensors", "--steps", "4", "--checkpoint-every", "2",
                  "--resume")
    assert (resumed.start_step, resumed.end_step, len(resumed.losses)) == (2, 4, 2)
    assert json.loads((tmp_path / "b" / "l-checkpoints" / "step-000004" / "state.json").read_text())["step"] == 4
    assert resumed.losses == pytest.approx(straight.losses[2:], rel=1e-4)
    a, b = load_file(str(straight.output)), load_file(str(resumed.output))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], msg=key)


def test_a_resumed_training_reports_the_loss_before_its_first_step(tiny_model, photos, tmp_path):
    """probe_loss is the loss on the photos before training and after it. A training resumed (a GPU node trains
    in chunks, each one a resume) reports the loss before step 1, as the straight run does, not the loss where
    its last chunk began, which made a training that learnt look as if it had learnt nothing."""
    straight = run(tiny_model, photos, tmp_path / "a" / "l.safetensors", "--steps", "6", "--checkpoint-every", "2")
    for steps in (2, 4, 6):
        resumed = run(tiny_model, photos, tmp_path / "b" / "l.safetensors", "--steps", str(steps),
                      "--checkpoint-every", "2", "--resume")
    assert resumed.start_step == 4
    assert resumed.probe_loss_before == pytest.approx(straight.probe_loss_before, rel=1e-6)
    assert resumed.probe_loss_after == pytest.approx(straight.probe_loss_after, rel=1e-4)


def test_resume_carries_the_fp16_gradient_scalers_state(tiny_model, photos, tmp_path, monkeypatch):
    """Under fp16 the loss is scaled, and the scale is learnt: it backs off where gradients overflow (that step is
    skipped) and grows after steps that do not. A resumed run (a GPU node's next chunk) goes on with the scale
    the checkpoint had, not from 65536 again, skipping steps the straight run did not. A CPU scaler stands in
    for the CUDA one; it grows at every step here so that the state moves."""
    scalers = []

    class Scaled(Trainer):
        def __init__(self, args):
            super().__init__(args)
            self.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=1)
            scalers.append(self.scaler)

    monkeypatch.setattr(backend.lora.train, "Trainer", Scaled)
    straight = run(tiny_model, photos, tmp_path / "a" / "l.safetensors", "--steps", "4", "--checkpoint-every", "2")
    run(tiny_model, photos, tmp_path / "b" / "l.safetensors", "--steps", "2", "--checkpoint-every", "2")
    assert scalers[1].get_scale() == 2.0 ** 12
    resumed = run(tiny_model, photos, tmp_path / "b" / "l.safetensors", "--steps", "4", "--checkpoint-every", "2",
                  "--resume")
    assert scalers[2].state_dict() == scalers[0].state_dict()
    assert scalers[2].get_scale() == 2.0 ** 14
    assert resumed.losses == pytest.approx(straight.losses[2:], rel=1e-4)


def test_text_encoder_lora_trains_with_gradient_checkpointing(tiny_model, photos, tmp_path, monkeypatch):
    """Checkpointing on: each step runs the text encoder's layers again in the backward pass (transformers checkpoints
    only in training mode), and the file holds a text-encoder LoRA that learnt the photos."""
    layer_runs = []

    class Watched(Trainer):
        def __init__(self, args):
            super().__init__(args)
            # a pre-hook: a recompute stops once it has what the backward pass needs, maybe before a module returns
            attention = next(m for name, m in self.text_encoder.named_modules() if name.endswith("layers.0.self_attn"))
            attention.register_forward_pre_hook(lambda *_: layer_runs.append(1))

    monkeypatch.setattr(backend.lora.train, "Trainer", Watched)
    steps = 25
    result = run(tiny_model, photos, tmp_path / "te.safetensors", "--steps", str(steps), "--checkpoint-every", "0",
                 "--train-text-encoder", "--gradient-checkpointing", "on")
    assert len(layer_runs) == 2 * steps + 2  # forward and recompute per step; the two probes run it once
    assert all(np.isfinite(result.losses)) and result.probe_loss_after < 0.97 * result.probe_loss_before, result
    tensors = load_file(str(result.output))
    te_up = [v for k, v in tensors.items() if k.startswith("text_encoder.") and ".lora_B." in k]
    assert te_up and any(k.startswith("unet.") for k in tensors)
    assert max(float(v.abs().max()) for v in te_up) > 0  # lora_B starts at zero: gradients reached it


@pytest.mark.parametrize("major, minor, expected", [(7, 5, torch.float16), (7, 0, torch.float16),
                                                      (8, 0, torch.bfloat16), (9, 0, torch.bfloat16)])
def test_auto_precision_is_bf16_only_where_the_gpu_has_it(monkeypatch, major, minor, expected):
    """A T4 or V100 (compute capability 7.x) only emulates bf16, in fp32 and many times slower than its fp16;
    torch.cuda.is_bf16_supported() says yes there all the same. Auto takes fp16 on those, bf16 from Ampere on,
    asking the training's own GPU (cuda:1 here), and nothing on a CPU."""
    asked = []

    def properties(device):
        asked.append(torch.device(device).index if not isinstance(device, int) else device)
        return type("Props", (), {"major": major, "minor": minor, "name": "GPU"})()

    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", properties)
    monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda device: True)  # emulation works
    assert mixed_precision("auto", torch.device("cuda:1")) == expected
    assert set(asked) == {1}
    assert mixed_precision("fp16", torch.device("cuda:1")) == torch.float16
    assert mixed_precision("auto", torch.device("cpu")) is None
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        mixed_precision("bf16", torch.device("cpu"))


def write_video(path: Path, greys: list[int], size: tuple[int, int]) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = *size, "yuv420p"
        for grey in greys:
            container.mux(stream.encode(av.VideoFrame.from_image(Image.new("RGB", size, (grey,) * 3))))
        container.mux(stream.encode())


def test_video_frames_from_an_mp4_are_evenly_spaced(tmp_path):
    """10 frames, each its own grey: 4 of them are frames 0, 2, 5 and 7, at the video's size; 50 are all 10."""
    video = tmp_path / "turn.mp4"
    write_video(video, [25 * i for i in range(10)], (64, 48))
    frames = video_frames(video, 4)
    assert [f.size for f in frames] == [(64, 48)] * 4
    assert [round(float(np.asarray(f).mean()) / 25) for f in frames] == [0, 2, 5, 7]
    assert len(video_frames(video, 50)) == 10


def test_an_animated_clips_frames_are_read_in_srgb(tmp_path):
    """Frames of an animated WebP or PNG with a colour profile (a phone's P3 clip, exported) are converted as
    photos are, not read as if sRGB (washed out); a transparent one keeps its alpha."""
    from tests.unit.test_colour_profiles import P3, in_srgb

    for suffix in ("webp", "png"):
        clip = tmp_path / f"turn.{suffix}"
        frames = [Image.new("RGB", (16, 16), (200, 120, 80)), Image.new("RGB", (16, 16), (60, 150, 200))]
        frames[0].save(clip, save_all=True, append_images=frames[1:], icc_profile=P3, lossless=True)
        read = video_frames(clip, 2)
        for frame, colour in zip(read, [(200, 120, 80), (60, 150, 200)]):
            assert frame.mode == "RGB"
            assert np.allclose(frame.getpixel((8, 8)), in_srgb(colour), atol=1.5), (suffix, frame.getpixel((8, 8)))


def test_photos_captions_and_video_frames(photos, tmp_path):
    gif = tmp_path / "turn.gif"
    frames = [Image.new("RGB", (40, 40), (i * 20, 0, 0)) for i in range(10)]
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=50)
    assert [f.getpixel((0, 0))[0] // 20 for f in video_frames(gif, 4)] == [0, 2, 5, 7]  # evenly spaced
    items = load_photos(photos, gif, 5, "a photo of {trigger}", "sks bottle")
    assert len(items) == 3 + 5
    assert [p.caption for p in items[:3]] == ["sks bottle on a table", "a photo of sks bottle", "a photo of sks bottle"]


def test_video_frames_are_captioned_with_the_trigger_like_the_photos(photos, tmp_path):
    """A --caption without {trigger} gets the trigger put in front, for the photos and for the video's frames
    alike: frames captioned without it would teach the product to the class word ("bottle") instead."""
    gif = tmp_path / "turn.gif"
    frames = [Image.new("RGB", (40, 40), (i * 20, 0, 0)) for i in range(4)]
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=50)
    items = load_photos(photos, gif, 4, "a bottle on a table", "sks bottle")
    assert [p.caption for p in items] == ["sks bottle on a table"] + ["sks bottle, a bottle on a table"] * 6


def test_a_photo_one_pixel_high_still_makes_views():
    """A strip (1000 x 1, a scanner's or a broken export's) passes the upload; its random crop of 60-100 % of one
    pixel was 0 pixels wide and the training died with ZeroDivisionError at the first step that drew it."""
    for size in ((1000, 1), (1, 1), (1, 700)):
        for seed in range(5):
            view = augment(Image.new("RGB", size, (90, 40, 20)), 32, random.Random(seed), True, True, 0.05)
            assert view.image.size == (32, 32) and view.original_size == size[::-1]


def cutout_photo(hidden: tuple[int, int, int]) -> Image.Image:
    """A packshot with a transparent ground, `hidden` being the colour under its transparent pixels."""
    img = Image.new("RGBA", (48, 40), (*hidden, 0))
    ImageDraw.Draw(img).ellipse((8, 4, 36, 36), fill=(200, 30, 30, 255))
    return img


def test_a_transparent_grounds_hidden_colour_is_never_learnt(tmp_path):
    """Dropping the alpha of a cut-out would show the colour under its transparent pixels (black in ours) as
    the product's ground; each view lays it on a colour of its own instead, the product's pixels as they were."""
    for n, hidden in enumerate([(0, 0, 0), (0, 255, 0)]):
        cutout_photo(hidden).save(tmp_path / f"cut_{n}.png")
    items = load_photos(tmp_path, None, 0, "a photo of {trigger}", "sks bottle")
    assert [p.image.mode for p in items] == ["RGBA", "RGBA"], "the transparency is kept until a view is made"
    views = [augment(p.image, 32, random.Random(7), False, False, 0).image for p in items]
    assert all(v.mode == "RGB" for v in views)
    assert np.array_equal(np.asarray(views[0]), np.asarray(views[1])), "what lies under the alpha is not seen"
    grounds = {augment(items[0].image, 32, random.Random(seed), False, False, 0).image.getpixel((0, 0))
               for seed in range(6)}
    assert len(grounds) > 1 and (0, 0, 0) not in grounds, "a ground of its own for each view"
    assert augment(items[0].image, 32, random.Random(1), False, False, 0).image.getpixel((16, 20)) == (200, 30, 30)
    opaque = tmp_path / "opaque"
    opaque.mkdir()
    Image.new("RGBA", (8, 8), (1, 2, 3, 255)).save(opaque / "p.png")
    assert load_photos(opaque, None, 0, "{trigger}", "sks")[0].image.mode == "RGB", "no alpha to honour"


def test_a_16_bit_grey_photo_is_learnt_in_its_own_tones(tmp_path):
    """PIL opens a 16-bit greyscale PNG as "I;16", and its convert("RGB") clips every value above 255: the photo
    became a white sheet. The folder's photos are brought to 8 bits as uploads are (normalize_photo)."""
    Image.new("I;16", (8, 8), 128 * 257).save(tmp_path / "grey16.png")
    photo, = load_photos(tmp_path, None, 0, "{trigger}", "sks")
    image = photo.image
    assert image.mode == "RGB" and image.getpixel((4, 4)) == (128, 128, 128)


def test_register_uploads_the_product(tmp_path, monkeypatch, capsys):
    """--register-only posts name, trigger, category, weight and the file with the API key; it never prints the key."""
    received = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            received["path"], received["auth"] = self.path, self.headers["Authorization"]
            received["body"] = self.rfile.read(int(self.headers["Content-Length"]))
            body = json.dumps({"name": "bottle", "trigger": "sks bottle", "category": "drinks", "weight": 0.8})
            self.send_response(201)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    lora = tmp_path / "bottle.safetensors"
    lora.write_bytes(b"LORA-BYTES")
    monkeypatch.setenv("API_KEY", "secret-key-123")
    try:
        main(["--trigger", "sks bottle", "--output", str(lora), "--register-only",
              "--category", "drinks", "--weight", "0.8", "--backend-url", f"http://127.0.0.1:{server.server_port}"])
    finally:
        server.shutdown()
    assert received["path"] == "/v1/products" and received["auth"] == "Bearer secret-key-123"
    for part in (b'name="name"\r\n\r\nbottle', b'name="trigger"\r\n\r\nsks bottle', b'name="category"\r\n\r\ndrinks',
                 b'name="weight"\r\n\r\n0.8', b"LORA-BYTES"):
        assert part in received["body"]
    out = capsys.readouterr()
    assert "registered product 'bottle'" in out.out and "secret-key-123" not in out.out + out.err


def test_a_training_that_finds_the_product_weighs_its_pixels_and_says_so(tiny_model, photos, tmp_path, trained,
                                                                          tiny_segmenter):
    """--find-product finds each photo's product (here the tiny "not white" remover): the loss weighs it over the
    table behind it (--background-weight), the training still learns, and the file says it was masked."""
    from backend.lora.safetensors_file import read_safetensors_header

    result = run(tiny_model, photos, tmp_path / "masked.safetensors", "--steps", "30", "--checkpoint-every", "0",
                 "--find-product", str(tiny_segmenter))
    assert result.probe_loss_after < 0.97 * result.probe_loss_before, result
    masked = read_safetensors_header((tmp_path / "masked.safetensors").read_bytes())[1]
    plain = read_safetensors_header(trained.output.read_bytes())[1]
    assert (masked["ss_masked_loss"], plain["ss_masked_loss"]) == ("True", "False")
    assert result.probe_loss_before != trained.probe_loss_before, "the probe loss weighs the product too"
