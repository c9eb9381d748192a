"""backend/images.py's colour handling: a photo with an ICC profile comes out in sRGB. The profiles are ICC v2
profiles written by hand here (header, tag table, tags), so that no profile file comes from outside; the expected
values are worked out independently with numpy from the primaries."""

import io
import itertools
import struct

import numpy as np
import pytest
from PIL import Image, ImageCms

from backend.images import normalize_photo

LIMITS = {"max_bytes": 10 * 1024 * 1024, "max_pixels": 4_000_000}


def decoded(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img

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


def test_normalize_photo_converts_a_16_bit_grey_png_through_its_profile():
    """A 16-bit greyscale PNG (Photoshop's Grayscale 16 Bits/Channel) carries its grey profile too: the 8-bit
    copy made of it must keep that profile, or its tones are read as sRGB."""
    source = Image.new("I;16", (16, 16), 128 * 257)
    buf = io.BytesIO()
    source.save(buf, format="PNG", icc_profile=LINEAR_GREY)
    assert decoded(buf.getvalue()).mode.startswith("I") and "icc_profile" in decoded(buf.getvalue()).info
    img = decoded(normalize_photo(buf.getvalue(), **LIMITS)[0])
    assert np.abs(np.array(img.getpixel((8, 8))) - srgb_encoded(128 / 255)).max() <= 1, img.getpixel((8, 8))
