"""backend/images.py: uploaded photos judged by content (refusals, EXIF), PNGs with parameters. Colour profiles:
test_colour_profiles.py."""

import io
import struct
import zlib

import pytest
from PIL import Image

from backend.images import BadImage, encode_png, normalize_photo, read_png_parameters
from tests.factories import png_bytes

LIMITS = {"max_bytes": 10 * 1024 * 1024, "max_pixels": 4_000_000}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def header_only_png(width: int, height: int) -> bytes:
    """A PNG whose header claims width × height over a 1×1 image's data: decoding it would eat memory or fail."""
    data = bytearray(png_bytes(1, 1))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def two_colour_jpeg(**save) -> bytes:
    """64 wide, 32 high: left half red, right half blue."""
    img = Image.new("RGB", (64, 32), (255, 0, 0))
    img.paste((0, 0, 255), (32, 0, 64, 32))
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=95, **save)
    return out.getvalue()


def refusal(data: bytes, **limits) -> str:
    with pytest.raises(BadImage) as info:
        normalize_photo(data, **(LIMITS | limits))
    return str(info.value)


def decoded(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


# ----- refusals -----
def test_normalize_photo_brings_a_long_short_side_down_with_its_transparency():
    photo = Image.new("RGBA", (300, 240), (0, 0, 0, 0))
    photo.paste((200, 30, 30, 255), (100, 80, 200, 160))
    out = io.BytesIO()
    photo.save(out, format="PNG")
    png, size = normalize_photo(out.getvalue(), **LIMITS, max_short_side=120)
    img = Image.open(io.BytesIO(png))
    assert size == img.size == (150, 120) and img.mode == "RGBA"
    assert img.getpixel((75, 60)) == (200, 30, 30, 255) and img.getpixel((2, 2))[3] == 0
    assert normalize_photo(out.getvalue(), **LIMITS, max_short_side=240)[1] == (300, 240), "at the limit: as is"


def test_normalize_photo_empty_is_refused():
    assert refusal(b"") == "the photo is empty"


def test_normalize_photo_over_max_bytes_is_refused_with_both_numbers():
    data = png_bytes(64, 64)
    assert refusal(data, max_bytes=len(data) - 1) == \
        f"the photo is {len(data)} bytes; the limit is {len(data) - 1} bytes"


def test_normalize_photo_exactly_max_bytes_is_accepted():
    data = png_bytes(64, 64)
    assert normalize_photo(data, max_bytes=len(data), max_pixels=LIMITS["max_pixels"])[0].startswith(PNG_SIGNATURE)


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF"])
def test_normalize_photo_other_formats_are_refused_by_content(fmt):
    assert refusal(png_bytes(16, 16, fmt=fmt)) == f"the photo must be PNG, JPEG or WebP, got {fmt}"


def test_normalize_photo_not_an_image_is_refused():
    message = refusal(b"%PDF-1.7 this is not a photo")
    assert message.startswith("the photo could not be read as an image: the file is not a PNG, JPEG or WebP")
    assert "BytesIO" not in message and "0x" not in message and "Error" not in message, "no Python internals"


@pytest.mark.parametrize("data", [png_bytes(64, 64)[:60], two_colour_jpeg()[:400]], ids=["png", "jpeg"])
def test_normalize_photo_truncated_file_is_refused(data):
    assert refusal(data) == ("the photo could not be read as an image: the file is damaged or incomplete; save or "
                             "export it again and send the new file")


def test_normalize_photo_too_many_pixels_is_refused_with_size_and_limit():
    assert refusal(png_bytes(100, 100), max_pixels=9_999) == \
        "the photo is 100x100 pixels; the limit is 9999 pixels in all"


def test_normalize_photo_exactly_max_pixels_is_accepted():
    out, size = normalize_photo(png_bytes(100, 100), max_bytes=LIMITS["max_bytes"], max_pixels=10_000)
    assert size == (100, 100)
    assert decoded(out).size == (100, 100)


def test_normalize_photo_bomb_header_is_refused_by_the_limit_before_decoding():
    # 8000 × 8000 is under PIL's own bomb threshold: only our limit stops it, and before decoding,
    # or the message would be about the missing pixel data instead
    assert refusal(header_only_png(8000, 8000)) == \
        f"the photo is 8000x8000 pixels; the limit is {LIMITS['max_pixels']} pixels in all"


def test_normalize_photo_huge_bomb_header_is_refused():
    assert refusal(header_only_png(30000, 30000)) == f"the photo claims more than {LIMITS['max_pixels']} pixels"


# ----- what comes out -----
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_normalize_photo_accepted_formats_come_out_as_png(fmt):
    out, size = normalize_photo(png_bytes(48, 32, color=(10, 200, 30), fmt=fmt), **LIMITS)
    assert size == (48, 32)
    img = decoded(out)
    assert out.startswith(PNG_SIGNATURE)
    assert (img.format, img.size) == ("PNG", (48, 32))
    assert all(abs(a - b) <= 3 for a, b in zip(img.convert("RGB").getpixel((24, 16)), (10, 200, 30)))


def test_normalize_photo_png_pixels_are_kept_exactly():
    source = Image.effect_noise((32, 24), 60).convert("RGB")
    buf = io.BytesIO()
    source.save(buf, format="PNG")
    out = decoded(normalize_photo(buf.getvalue(), **LIMITS)[0])
    assert list(out.convert("RGB").getdata()) == list(source.getdata())


def test_normalize_photo_applies_exif_orientation():
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: show it turned 90° clockwise
    img = decoded(normalize_photo(two_colour_jpeg(exif=exif), **LIMITS)[0]).convert("RGB")
    assert img.size == (32, 64)
    red, blue = img.getpixel((16, 8)), img.getpixel((16, 56))
    assert red[0] > 240 and red[2] < 15
    assert blue[2] > 240 and blue[0] < 15


def test_normalize_photo_removes_exif():
    exif = Image.Exif()
    exif[0x0112] = 1
    exif[0x010F] = "PhoneMaker"  # Make
    exif[0x8825] = {1: "N", 2: (51.0, 30.0, 0.0)}  # GPSInfo
    source = two_colour_jpeg(exif=exif)
    assert b"PhoneMaker" in source
    out, _ = normalize_photo(source, **LIMITS)
    img = decoded(out)
    assert b"PhoneMaker" not in out and b"Exif" not in out and b"eXIf" not in out
    assert "exif" not in img.info
    assert dict(img.getexif()) == {}


def test_normalize_photo_palette_image_keeps_its_colours():
    source = Image.new("RGB", (16, 16), (0, 128, 255)).convert("P")
    buf = io.BytesIO()
    source.save(buf, format="PNG")
    img = decoded(normalize_photo(buf.getvalue(), **LIMITS)[0])
    assert img.convert("RGB").getpixel((8, 8)) == source.convert("RGB").getpixel((8, 8))
    if "A" in img.getbands():
        assert img.getchannel("A").getextrema() == (255, 255)


def grey16_png(values: list[list[int]], transparent: int | None = None) -> bytes:
    """A 16-bit greyscale PNG (colour type 0), written by hand: PIL cannot write one from 16-bit values."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + struct.pack(f">{len(row)}H", *row) for row in values)
    header = struct.pack(">IIBBBBB", len(values[0]), len(values), 16, 0, 0, 0, 0)
    trns = chunk(b"tRNS", struct.pack(">H", transparent)) if transparent is not None else b""
    return PNG_SIGNATURE + chunk(b"IHDR", header) + trns + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def test_normalize_photo_16_bit_grey_keeps_its_tones():
    # PIL opens it as "I;16" and its convert() clips every value above 255: all but black came out white
    img = decoded(normalize_photo(grey16_png([[0, 1000, 40000, 65535]] * 2), **LIMITS)[0]).convert("RGB")
    assert [img.getpixel((x, 1))[0] for x in range(4)] == [0, 3, 156, 255]


def test_normalize_photo_16_bit_grey_keeps_its_transparent_value():
    img = decoded(normalize_photo(grey16_png([[0, 1000, 40000, 65535]] * 2, transparent=0), **LIMITS)[0])
    assert img.mode == "RGBA"
    assert [img.getpixel((x, 1)) for x in range(4)] == [(0, 0, 0, 0), (3, 3, 3, 255), (156, 156, 156, 255),
                                                        (255, 255, 255, 255)]


def test_normalize_photo_keeps_an_alpha_channel():
    source = Image.new("RGBA", (16, 16), (200, 30, 30, 255))
    source.paste((0, 0, 0, 0), (0, 0, 8, 16))
    buf = io.BytesIO()
    source.save(buf, format="PNG")
    img = decoded(normalize_photo(buf.getvalue(), **LIMITS)[0])
    assert img.mode == "RGBA"
    assert img.getpixel((12, 8)) == (200, 30, 30, 255)
    assert img.getpixel((4, 8))[3] == 0


# ----- PNG parameters -----
PARAMETERS = {"prompt": "a bottle on a beach", "negative_prompt": "blurry", "steps": 30, "guidance_scale": 7.5,
              "seed": 42, "model": "tiny-sd", "loras": [{"name": "bottle", "weight": 0.8}]}


def test_encode_png_parameters_round_trip():
    data = encode_png(Image.new("RGB", (64, 32), (1, 2, 3)), PARAMETERS)
    assert read_png_parameters(data) == PARAMETERS


def test_encode_png_keeps_pixels_exactly():
    source = Image.effect_noise((32, 16), 60).convert("RGB")
    assert list(decoded(encode_png(source, PARAMETERS)).getdata()) == list(source.getdata())


def test_encode_png_writes_the_a1111_parameters_line():
    img = decoded(encode_png(Image.new("RGB", (64, 32)), PARAMETERS))
    assert img.text["parameters"] == ("a bottle on a beach\nNegative prompt: blurry\n"
                                      "Steps: 30, CFG scale: 7.5, Seed: 42, Size: 64x32, Model: tiny-sd")


def test_read_png_parameters_of_a_plain_png_is_empty():
    assert read_png_parameters(png_bytes(8, 8)) == {}
