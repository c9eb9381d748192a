"""backend/images.py: uploaded photos judged by content (refusals, EXIF, colour profiles), PNGs with parameters."""

import io
import itertools
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageCms

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
    assert message.startswith("the photo could not be read as an image (UnidentifiedImageError")


@pytest.mark.parametrize("data", [png_bytes(64, 64)[:60], two_colour_jpeg()[:400]], ids=["png", "jpeg"])
def test_normalize_photo_truncated_file_is_refused(data):
    assert refusal(data).startswith("the photo could not be read as an image")


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


# ----- colour profiles -----
# ICC v2 profiles written by hand (header, tag table, tags), so that no profile file comes from outside.
D50 = np.array([0.9642, 1.0, 0.8249])  # the ICC's connection space white
D65 = (0.3127, 0.3290)
SRGB_PRIMARIES = ((0.64, 0.33), (0.30, 0.60), (0.15, 0.06))
P3_PRIMARIES = ((0.680, 0.320), (0.265, 0.690), (0.150, 0.060))
ADOBE_PRIMARIES = ((0.64, 0.33), (0.21, 0.71), (0.15, 0.06))
ADOBE_GAMMA = 563 / 256
BRADFORD = np.array([[0.8951, 0.2664, -0.1614], [-0.7502, 1.7135, 0.0367], [0.0389, -0.0685, 1.0296]])


def s15(*values: float) -> bytes:
    return b"".join(struct.pack(">i", round(v * 65536)) for v in values)


def icc_profile(description: str, tags: dict[bytes, bytes], space: bytes = b"RGB ", pcs: bytes = b"XYZ ",
                device: bytes = b"mntr") -> bytes:
    """An ICC v2 profile with a description, a D50 white point and `tags`, each 4-byte aligned."""
    text = description.encode() + b"\0"
    tags = {b"desc": b"desc" + bytes(4) + struct.pack(">I", len(text)) + text + bytes(8 + 3 + 67),
            b"wtpt": b"XYZ " + bytes(4) + s15(*D50)} | tags
    start, table, body = 128 + 4 + 12 * len(tags), b"", b""
    for signature, data in tags.items():
        table += struct.pack(">4sII", signature, start + len(body), len(data))
        body += data + bytes(-len(data) % 4)
    header = (struct.pack(">I4sI4s4s4s12s4s", start + len(body), b"", 0x02100000, device, space, pcs, b"", b"acsp")
              .ljust(64, b"\0") + struct.pack(">I", 0) + s15(*D50)).ljust(128, b"\0")
    return header + struct.pack(">I", len(tags)) + table + body


def gamma_curve(gamma: float) -> bytes:
    return b"curv" + bytes(4) + struct.pack(">IH", 1, round(gamma * 256))


def srgb_curve() -> bytes:  # sRGB's own: linear near black, then a 2.4 power
    return b"para" + bytes(4) + struct.pack(">HH", 3, 0) + s15(2.4, 1 / 1.055, 0.055 / 1.055, 1 / 12.92, 0.04045)


def rgb_to_xyz(primaries, white=D65) -> np.ndarray:
    """The linear RGB -> XYZ matrix of the space with these red, green, blue and white chromaticities."""
    def xyz(x, y):
        return np.array([x / y, 1.0, (1 - x - y) / y])

    columns = np.stack([xyz(*p) for p in primaries], axis=1)
    return columns * np.linalg.solve(columns, xyz(*white))


def under_d50(primaries) -> np.ndarray:
    """rgb_to_xyz adapted from white D65 to D50 (Bradford), as an ICC profile holds it."""
    white = rgb_to_xyz(primaries) @ np.ones(3)
    return np.linalg.inv(BRADFORD) @ np.diag((BRADFORD @ D50) / (BRADFORD @ white)) @ BRADFORD @ rgb_to_xyz(primaries)


def matrix_profile(description: str, primaries, curve: bytes) -> bytes:
    """An RGB display profile: its primaries (white D65) and one curve for all three channels."""
    red, green, blue = under_d50(primaries).T
    return icc_profile(description, {b"rXYZ": b"XYZ " + bytes(4) + s15(*red), b"gXYZ": b"XYZ " + bytes(4) + s15(*green),
                                     b"bXYZ": b"XYZ " + bytes(4) + s15(*blue),
                                     b"rTRC": curve, b"gTRC": curve, b"bTRC": curve})


def srgb_linear(values) -> np.ndarray:
    v = np.asarray(values) / 255
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def adobe_linear(values) -> np.ndarray:
    return (np.asarray(values) / 255) ** ADOBE_GAMMA


def srgb_encoded(linear) -> np.ndarray:
    v = np.clip(linear, 0, 1)
    return 255 * np.where(v <= 0.0031308, 12.92 * v, 1.055 * v ** (1 / 2.4) - 0.055)


def srgb_lab(rgb) -> np.ndarray:
    """CIELAB (D50) of sRGB values, as a press profile's table holds colours."""
    t = under_d50(SRGB_PRIMARIES) @ srgb_linear(rgb) / D50
    f = np.where(t > (6 / 29) ** 3, np.cbrt(t), t / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def press_profile(inks) -> bytes:
    """A CMYK profile of a press whose cyan, magenta, yellow and black inks look like these sRGB colours on white
    paper and multiply where they overlap: an A2B0 lut8 table, CMYK -> Lab, two grid points per ink."""
    clut = b""
    for used in itertools.product((0, 1), repeat=4):  # the first ink varies slowest
        rgb = np.prod([np.array(ink) / 255 if on else np.ones(3) for on, ink in zip(used, inks)], axis=0) * 255
        lightness, a, b = srgb_lab(rgb)
        clut += bytes([round(lightness * 2.55), round(a) + 128, round(b) + 128])
    ramp = bytes(range(256))
    lut = b"mft1" + bytes(4) + bytes([4, 3, 2, 0]) + s15(*np.eye(3).flat) + ramp * 4 + clut + ramp * 3
    return icc_profile("Press (test)", {b"A2B0": lut}, space=b"CMYK", pcs=b"Lab ", device=b"prtr")


P3 = matrix_profile("Display P3 (test)", P3_PRIMARIES, srgb_curve())
ADOBE_RGB = matrix_profile("Adobe RGB (test)", ADOBE_PRIMARIES, gamma_curve(ADOBE_GAMMA))
LINEAR_GREY = icc_profile("Linear grey (test)", {b"kTRC": gamma_curve(1.0)}, space=b"GRAY")
PRESS_INKS = ((0, 174, 239), (236, 0, 140), (255, 242, 0), (0, 0, 0))
PRESS = press_profile(PRESS_INKS)
SRGB_LIKE = matrix_profile("sRGB IEC61966-2.1", SRGB_PRIMARIES, gamma_curve(2.2))  # a real one's name, rough curves


def in_srgb(rgb, primaries=P3_PRIMARIES, linear=srgb_linear) -> np.ndarray:
    """What a space's RGB values are in sRGB, worked out here: made linear, through XYZ (both white D65), encoded."""
    return srgb_encoded(np.linalg.solve(rgb_to_xyz(SRGB_PRIMARIES), rgb_to_xyz(primaries) @ linear(rgb)))


def stripes(mode: str, colours, fmt: str = "PNG", **save) -> bytes:
    """One 16 x 16 square per colour, side by side."""
    img = Image.new(mode, (16 * len(colours), 16))
    for n, colour in enumerate(colours):
        img.paste(colour, (16 * n, 0, 16 * n + 16, 16))
    out = io.BytesIO()
    img.save(out, format=fmt, **save)
    return out.getvalue()


def colours_of(png: bytes, count: int) -> list[tuple]:
    img = decoded(png)
    return [img.getpixel((16 * n + 8, 8)) for n in range(count)]


@pytest.mark.parametrize(("profile", "space"), [(P3, "RGB"), (ADOBE_RGB, "RGB"), (LINEAR_GREY, "GRAY"),
                                                (PRESS, "CMYK")], ids=["p3", "adobe-rgb", "grey", "press"])
def test_hand_written_profiles_are_read_by_littlecms(profile, space):
    read = ImageCms.ImageCmsProfile(io.BytesIO(profile))
    assert read.profile.xcolor_space.strip() == space
    assert ImageCms.getProfileDescription(read).strip().endswith("(test)")


IN_GAMUT = (200, 120, 80)  # a terracotta sRGB can show


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
@pytest.mark.parametrize(("profile", "primaries", "linear"), [(P3, P3_PRIMARIES, srgb_linear),
                                                              (ADOBE_RGB, ADOBE_PRIMARIES, adobe_linear)],
                         ids=["p3", "adobe-rgb"])
def test_normalize_photo_converts_a_wide_gamut_photo_to_srgb(profile, primaries, linear, fmt):
    colours = [IN_GAMUT, (255, 0, 0), (0, 255, 0)]  # and both spaces' green, which sRGB cannot show
    save = {"quality": 95} if fmt == "JPEG" else {"lossless": True} if fmt == "WEBP" else {}
    out = colours_of(normalize_photo(stripes("RGB", colours, fmt, icc_profile=profile, **save), **LIMITS)[0], 3)
    expected = [in_srgb(colour, primaries, linear) for colour in colours]
    assert np.abs(np.array(out) - expected).max() <= 3, (out, expected)
    assert np.abs(np.array(IN_GAMUT) - expected[0]).max() > 10, "read as sRGB, the colour would be wrong"


def test_normalize_photo_clips_what_srgb_cannot_show_to_its_edge():
    assert colours_of(normalize_photo(stripes("RGB", [(255, 0, 0)], icc_profile=P3), **LIMITS)[0], 1) == \
        [(255, 0, 0)], "P3's red is redder than sRGB's: the reddest sRGB has, not a duller mix"


def test_normalize_photo_says_its_png_is_srgb_and_drops_the_uploads_profile():
    img = decoded(normalize_photo(stripes("RGB", [IN_GAMUT], icc_profile=P3), **LIMITS)[0])
    assert img.info.get("srgb") == 0 and "icc_profile" not in img.info


def test_normalize_photo_takes_an_srgb_profile_at_its_word_and_keeps_pixels_exactly():
    source = Image.effect_noise((32, 24), 60).convert("RGB")
    buf = io.BytesIO()
    source.save(buf, format="PNG", icc_profile=SRGB_LIKE)
    img = decoded(normalize_photo(buf.getvalue(), **LIMITS)[0])
    assert list(img.getdata()) == list(source.getdata())


def test_normalize_photo_keeps_alpha_exactly_when_it_converts_colours():
    source = Image.new("RGBA", (256, 4))
    source.putdata([(*IN_GAMUT, a) for _ in range(4) for a in range(256)])
    buf = io.BytesIO()
    source.save(buf, format="PNG", icc_profile=P3)
    img = decoded(normalize_photo(buf.getvalue(), **LIMITS)[0])
    assert img.mode == "RGBA"
    assert list(img.getchannel("A").getdata()) == list(source.getchannel("A").getdata())
    assert np.abs(np.array(img.getpixel((255, 2))[:3]) - in_srgb(IN_GAMUT)).max() <= 3


@pytest.mark.parametrize("profile", [b"not an ICC profile" * 10, LINEAR_GREY], ids=["corrupt", "for-grey-pixels"])
def test_normalize_photo_with_a_profile_it_cannot_use_reads_pixels_as_srgb(profile, caplog):
    source = Image.effect_noise((32, 24), 60).convert("RGB")
    buf = io.BytesIO()
    source.save(buf, format="PNG", icc_profile=profile)
    img = decoded(normalize_photo(buf.getvalue(), **LIMITS)[0])
    assert list(img.getdata()) == list(source.getdata())
    assert "icc_profile" not in img.info
    assert "ICC profile could not be used" in caplog.text


def test_normalize_photo_converts_grey_through_its_profile():
    # linear grey 128 is half the light: sRGB writes that as 188
    img = decoded(normalize_photo(stripes("L", [128], icc_profile=LINEAR_GREY), **LIMITS)[0])
    assert np.abs(np.array(img.getpixel((8, 8))) - srgb_encoded(128 / 255)).max() <= 1


def test_normalize_photo_cmyk_jpeg_without_a_profile_converts_as_before():
    data = stripes("CMYK", [(255, 0, 0, 0), (0, 0, 0, 0)], "JPEG", quality=95)
    by_pil = decoded(data).convert("RGB")
    assert colours_of(normalize_photo(data, **LIMITS)[0], 2) == [by_pil.getpixel((8, 8)), by_pil.getpixel((24, 8))]


def test_normalize_photo_cmyk_jpeg_takes_its_inks_from_its_profile():
    colours = [(255, 0, 0, 0), (0, 255, 0, 0), (0, 0, 0, 0), (0, 0, 0, 255)]
    out = colours_of(normalize_photo(stripes("CMYK", colours, "JPEG", quality=95, icc_profile=PRESS), **LIMITS)[0], 4)
    expected = [PRESS_INKS[0], PRESS_INKS[1], (255, 255, 255), (0, 0, 0)]  # read as RGB: (0, 255, 255), ...
    assert np.abs(np.array(out) - expected).max() <= 4, out


def test_normalize_photo_of_a_p3_jpeg_is_upright_and_without_exif():
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways
    exif[0x010F] = "PhoneMaker"
    data = stripes("RGB", [IN_GAMUT, (255, 0, 0)], "JPEG", quality=95, icc_profile=P3, exif=exif)
    out = normalize_photo(data, **LIMITS)[0]
    img = decoded(out)
    assert img.size == (16, 32) and b"PhoneMaker" not in out and "exif" not in img.info
    assert np.abs(np.array(img.getpixel((8, 8))) - in_srgb(IN_GAMUT)).max() <= 3


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
