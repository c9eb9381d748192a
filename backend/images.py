"""Pictures in and out: judging an uploaded photo by its content, and writing PNGs with their parameters."""

import io
import json
import logging
import warnings

import numpy as np
from PIL import Image, ImageCms, ImageOps, PngImagePlugin, UnidentifiedImageError

log = logging.getLogger("showroom.images")

ACCEPTED_FORMATS = {"PNG", "JPEG", "WEBP"}
NOT_A_PICTURE = ("the photo could not be read as an image: the file is not a PNG, JPEG or WebP picture (a PDF, a "
                 "document, or an iPhone HEIC photo renamed will not do; export it as JPEG or PNG)")
SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
SRGB_PNG = PngImagePlugin.PngInfo()
SRGB_PNG.add(b"sRGB", b"\x00")  # the PNG's own 1-byte "these numbers are sRGB" (intent: perceptual, as usual)


class BadImage(ValueError):
    """The upload is not a usable picture; the message says why."""


def has_transparency(img: Image.Image) -> bool:
    """True when the image carries an alpha channel (or a transparent colour) that is not fully opaque."""
    if img.mode not in ("RGBA", "LA", "PA", "RGBa", "La") and "transparency" not in img.info:
        return False
    lowest, _ = img.convert("RGBA").getchannel("A").getextrema()
    return lowest < 255


def normalize_photo(data: bytes, *, max_bytes: int, max_pixels: int,
                    max_short_side: int | None = None) -> tuple[bytes, tuple[int, int]]:
    """Check an uploaded photo by its content and return it as a clean PNG with no EXIF, upright, in sRGB
    (see to_srgb), and its (width, height). Transparency is kept (RGBA): a packshot's own cut-out is the best there is.
    With `max_short_side`, a photo whose short side is longer is scaled down to it, aspect kept.

    Refuses: empty or oversized uploads, anything that is not PNG/JPEG/WebP whatever its name
    or content type says, truncated files, and images whose header claims more pixels than
    `max_pixels` (decompression bombs are refused before any pixel is decoded).
    """
    if not data:
        raise BadImage("the photo is empty")
    if len(data) > max_bytes:
        raise BadImage(f"the photo is {len(data)} bytes; the limit is {max_bytes} bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.format not in ACCEPTED_FORMATS:
                raise BadImage(f"the photo must be PNG, JPEG or WebP, got {img.format}")
            width, height = img.size
            if width * height > max_pixels:
                raise BadImage(f"the photo is {width}x{height} pixels; the limit is {max_pixels} pixels in all")
            img.load()
            img = ImageOps.exif_transpose(img)
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadImage(f"the photo claims more than {max_pixels} pixels") from None
    except UnidentifiedImageError:  # its text names an in-memory buffer ("<_io.BytesIO object at 0x...>")
        raise BadImage(NOT_A_PICTURE) from None
    except Exception as e:  # PIL raises many kinds for broken input: all mean the same to the user
        log.info("unreadable photo: %s: %s", type(e).__name__, e)
        raise BadImage("the photo could not be read as an image: the file is damaged or incomplete; save or export "
                       "it again and send the new file") from None
    img = to_pixels(img)
    if max_short_side and min(img.size) > max_short_side:
        scale = max_short_side / min(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.LANCZOS)
    out = io.BytesIO()
    # a fresh PNG carries no EXIF, GPS or maker notes; nor the upload's ICC profile: its pixels are sRGB now
    img.save(out, format="PNG", icc_profile=None, pnginfo=SRGB_PNG)
    return out.getvalue(), img.size


def fit_photo(photo: Image.Image, width: int, height: int) -> Image.Image:
    """Restyle's input: scaled to cover width x height and centre-cropped, never stretched; a
    transparent photo is laid on white first."""
    photo = photo.convert("RGBA")
    flat = Image.new("RGB", photo.size, (255, 255, 255))
    flat.paste(photo, mask=photo.getchannel("A"))
    return ImageOps.fit(flat, (width, height), Image.Resampling.LANCZOS, centering=(0.5, 0.5))


def to_pixels(img: Image.Image) -> Image.Image:
    """A photo as generation reads it: 8-bit, in sRGB, RGBA where it has transparency, else RGB (an alpha hiding
    nothing is dropped). Uploads (normalize_photo) and the trainer's own photo folder both go through here."""
    img = to_srgb(eight_bit(img))
    return img.convert("RGBA") if has_transparency(img) else img.convert("RGB")


def to_srgb(img: Image.Image) -> Image.Image:
    """The image in sRGB, which all generation assumes, when it carries an ICC profile of another space: Display
    P3 (iPhones), Adobe RGB (cameras, stock), a press profile (CMYK packshots), a grey one. Read as sRGB, their
    numbers give wrong colours (P3 looks washed out). Alpha is kept as it is. Without a profile, with an sRGB one,
    or with one that cannot be read or does not fit the pixels, the image comes back as it is."""
    icc = img.info.get("icc_profile")
    if not icc or img.mode not in ("RGB", "RGBA", "CMYK", "L", "LA", "P", "PA"):
        return img
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if "sRGB" in ImageCms.getProfileDescription(profile):  # sRGB IEC61966-2.1, sRGB2014, ...: as they are
            return img
        if img.mode in ("P", "PA"):
            img = img.convert("RGBA" if has_transparency(img) else "RGB")
        alpha = img.getchannel("A") if img.mode in ("RGBA", "LA") else None
        colour = img.convert({"RGBA": "RGB", "LA": "L"}.get(img.mode, img.mode))
        # Relative colorimetric: the colours sRGB can show stay exact (a product's own colour is the point) and
        # the few it cannot are clipped to its edge; perceptual would move them all, where a profile defines it
        # at all (P3 and Adobe RGB are matrices, with no perceptual table). Black point compensation brings a
        # press's ink black to sRGB's black, as Photoshop does by default; where black is zero it changes nothing.
        srgb = ImageCms.profileToProfile(colour, profile, SRGB, renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC,
                                         outputMode="RGB", flags=ImageCms.Flags.BLACKPOINTCOMPENSATION)
    except (OSError, ImageCms.PyCMSError) as e:  # corrupt bytes, or a profile for other pixels (CMYK on RGB)
        log.warning("a photo's ICC profile could not be used, its pixels are read as sRGB: %s", e)
        return img
    if alpha is not None:
        srgb.putalpha(alpha)
    return srgb


def eight_bit(img: Image.Image) -> Image.Image:
    """A 16-bit greyscale PNG (PIL's "I;16") as 8-bit "L", or "LA" when it names a transparent grey.
    PIL's own convert() clips every value above 255 instead of scaling, which turns all but black white.
    The high byte is kept, as PIL does for 16-bit colour PNGs."""
    if not img.mode.startswith("I"):
        return img
    values = np.clip(np.asarray(img.convert("I")), 0, 65535)
    grey = Image.fromarray((values >> 8).astype(np.uint8), "L")
    transparent = img.info.get("transparency")
    if isinstance(transparent, int):
        alpha = np.where(values == transparent, 0, 255).astype(np.uint8)
        grey = Image.merge("LA", (grey, Image.fromarray(alpha, "L")))
    if "icc_profile" in img.info:  # a new image has no info: the grey profile goes along, for to_srgb
        grey.info["icc_profile"] = img.info["icc_profile"]
    return grey


def encode_png(img: Image.Image, parameters: dict) -> bytes:
    """A PNG with its generation parameters in text chunks: `parameters` (the A1111 style line
    other tools read) and `showroom` (the same as JSON)."""
    info = PngImagePlugin.PngInfo()
    line = (f"{parameters.get('prompt', '')}\nNegative prompt: {parameters.get('negative_prompt', '')}\n"
            f"Steps: {parameters.get('steps')}, CFG scale: {parameters.get('guidance_scale')}, "
            f"Seed: {parameters.get('seed')}, Size: {img.width}x{img.height}, Model: {parameters.get('model')}")
    info.add_text("parameters", line)
    info.add_text("showroom", json.dumps(parameters, sort_keys=True))
    out = io.BytesIO()
    img.save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def read_png_parameters(data: bytes) -> dict:
    with Image.open(io.BytesIO(data)) as img:
        return json.loads(img.text.get("showroom", "{}"))
