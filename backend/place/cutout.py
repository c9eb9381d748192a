"""Cutting the product out of a photo: its own transparency, or a rembg background remover."""

import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from backend.errors import Unavailable
from backend.images import has_transparency
from backend.place.composite import masked_mean

DEFAULT_MODEL = "birefnet-general"

# rembg models that turn a photo into one foreground mask from their name alone. Left out: the
# *_custom sessions (they need a file: give BG_REMOVAL_MODEL a path instead), `sam` (needs point
# prompts), `u2net_cloth_seg` (three clothing masks) and the remote, billed ones. A unit test keeps
# this list equal to what the pinned rembg registers, so it cannot drift silently; it is spelled out
# here so a bad name is refused at once, without the seconds that importing rembg costs.
MODEL_NAMES = frozenset({
    "birefnet-general", "birefnet-general-lite", "birefnet-general-fp16", "birefnet-massive",
    "birefnet-dis", "birefnet-hrsod", "birefnet-cod", "birefnet-portrait", "bria-rmbg",
    "isnet-general-use", "isnet-anime", "silueta", "u2net", "u2netp", "u2net_human_seg",
})

# Mask levels within this much of either end are the model's noise, not a soft edge. Snapping them
# matters: only alpha == 255 is kept pixel for pixel (and left alone by the inpainting), so an
# interior at 252 would be repainted under the product.
MASK_CLEAR_BELOW, MASK_SOLID_FROM = 16, 240
FOREGROUND_ALPHA = 128        # "clearly foreground" when counting how much product there is
MIN_FOREGROUND_FRACTION = 0.005  # of the photo's pixels; less, from a remover, is a speck, not a product
# A photo's own transparency is no model's guess: a small product on a large transparent canvas (an export that
# kept the photo's frame) is still the product. It needs only this many clearly opaque pixels.
MIN_OWN_ALPHA_PIXELS = 256
TRIM_ALPHA = 8                # the box is trimmed to alpha above this; fainter haze is dropped
FLAT_SPREAD = 8               # a photo whose channels all vary less than this is one flat colour
# Soft edge pixels take the colour of opaque product pixels within about this share of the photo's
# larger side (masks come from 320 to 1024 px predictions, so their soft band is a few photo pixels);
# where opaque pixels weigh less than MIN_INSIDE_COVERAGE nearby (a thin wisp), the colour stays.
EDGE_RADIUS_DIVISOR, MIN_INSIDE_COVERAGE = 300, 0.05


class NothingFound(ValueError):
    """The photo holds no product that can be cut out."""

    def __init__(self, why: str):
        super().__init__(f"no product was found in the photo: {why}; try a photo with the product on a "
                         "plain background, or a PNG with transparency")


def cut_out(photo: Image.Image, remover: Callable[[Image.Image], Image.Image] | None) -> Image.Image:
    """The product as RGBA, trimmed to its box: the photo's own alpha when it has one, else the remover's mask."""
    if has_transparency(photo):
        return _trimmed(photo, np.asarray(photo.convert("RGBA").getchannel("A")), clean_edges=False, own_alpha=True)
    rgb = photo.convert("RGB")
    return _trimmed(rgb, _foreground_mask(rgb, remover), clean_edges=True)


def product_mask(photo: Image.Image, remover: Callable[[Image.Image], Image.Image] | None) -> Image.Image:
    """Where the product lies in the photo, as `cut_out` finds it: its own alpha, else the remover's mask ("L", the
    photo's size; NothingFound when there is no product, as there). A training's views hold it and its loss
    weighs it most; nothing is cut."""
    if has_transparency(photo):
        alpha, own = np.asarray(photo.convert("RGBA").getchannel("A")), True
    else:
        alpha, own = _foreground_mask(photo.convert("RGB"), remover), False
    _check_enough(alpha, own)
    return Image.fromarray(alpha, "L")


def _foreground_mask(rgb: Image.Image, remover: Callable[[Image.Image], Image.Image] | None) -> np.ndarray:
    if remover is None:
        raise ValueError("the photo has no transparency, so a background remover is needed, got None")
    if max(high - low for low, high in rgb.getextrema()) < FLAT_SPREAD:
        # Removers stretch their prediction to its own min..max, so a flat photo would come back as noise.
        raise NothingFound("the photo is a single flat colour")
    mask = remover(rgb)
    if mask.size != rgb.size:
        raise ValueError(f"the background remover returned a {mask.size} mask for a {rgb.size} photo")
    levels = np.asarray(mask.convert("L"))
    return np.where(levels < MASK_CLEAR_BELOW, 0, np.where(levels >= MASK_SOLID_FROM, 255, levels)).astype(np.uint8)


def _check_enough(alpha: np.ndarray, own_alpha: bool) -> None:
    opaque = np.count_nonzero(alpha >= FOREGROUND_ALPHA)
    if own_alpha and opaque < MIN_OWN_ALPHA_PIXELS:
        raise NothingFound(f"only {opaque} of its pixels are opaque, at least {MIN_OWN_ALPHA_PIXELS} are needed")
    fraction = opaque / alpha.size
    if not own_alpha and fraction < MIN_FOREGROUND_FRACTION:
        raise NothingFound(f"only {fraction:.2%} of the photo is foreground, at least "
                           f"{MIN_FOREGROUND_FRACTION:.1%} is needed")


def _trimmed(photo: Image.Image, alpha: np.ndarray, clean_edges: bool, own_alpha: bool = False) -> Image.Image:
    _check_enough(alpha, own_alpha)
    box = Image.fromarray(alpha > TRIM_ALPHA).getbbox()
    colour = np.array(photo.crop(box).convert("RGB"))
    alpha = alpha[box[1]:box[3], box[0]:box[2]]
    if clean_edges:
        colour = _decontaminate(colour, alpha, radius=max(2.0, max(photo.size) / EDGE_RADIUS_DIVISOR))
    # What lies under alpha 0 is invisible; left in, it would carry the photo's background into cutout.png.
    colour[alpha == 0] = 0
    return Image.fromarray(np.dstack([colour, alpha]), "RGBA")


def _decontaminate(rgb: np.ndarray, alpha: np.ndarray, radius: float) -> np.ndarray:
    """The colours with each soft edge pixel replaced by the product's colour just inside it.

    A soft edge pixel's colour is partly the photo's background (a white halo, on a white table), which
    would show around the product in every new scene; the opaque pixels nearby carry the product's own.
    """
    edge = (alpha > 0) & (alpha < 255)
    if not edge.any():
        return rgb
    inside, coverage = masked_mean(rgb, np.where(alpha == 255, 255, 0).astype(np.uint8), radius, edge)
    colours = rgb[edge]
    known = coverage >= MIN_INSIDE_COVERAGE
    colours[known] = np.clip(inside[known] + 0.5, 0, 255).astype(np.uint8)
    rgb[edge] = colours
    return rgb


class BackgroundRemover:
    """A rembg session chosen by BG_REMOVAL_MODEL, opened on first use and shared by all threads."""

    def __init__(self, model: str = DEFAULT_MODEL):
        self.model = model
        self.model_path = _model_file(model)
        if self.model_path is None and model not in MODEL_NAMES:
            raise ValueError(f"BG_REMOVAL_MODEL must be one of {', '.join(sorted(MODEL_NAMES))} or the path of "
                             f"an .onnx file, got {model!r}")
        self._session = None
        self._lock = threading.Lock()

    def __call__(self, rgb: Image.Image) -> Image.Image:
        """The foreground mask ("L", the photo's size) of an RGB photo."""
        # session.predict rather than rembg.remove(only_mask=True): remove() would turn the photo by its
        # EXIF orientation a second time and stacks several masks into one taller image; predict gives
        # the model's mask, already resized to the photo.
        masks = self.session().predict(rgb)
        return masks[0].convert("L")

    def on_disk(self) -> bool:
        """Whether the model is on this machine already (a path, or a rembg model downloaded before), so opening it
        downloads nothing."""
        if self.model_path is not None:
            return True
        try:
            from rembg.sessions import sessions_class

            kind = next(c for c in sessions_class if c.name() == self.model)
            return kind.resolve_existing(f"{self.model}.onnx") is not None
        except (ImportError, AttributeError, StopIteration, TypeError):  # rembg's internals moved: no, not a download
            return False

    def session(self):
        """The rembg session, opened once (double-checked under a lock: opening loads the model)."""
        if self._session is None:
            with self._lock:
                if self._session is None:
                    self._session = self._open()
        return self._session

    def _open(self):
        try:
            if self.model_path is not None:
                return _operator_model_session(self.model_path)
            from rembg import new_session

            return new_session(self.model)
        except Exception as err:  # a 503 with the reason, not a 500: the operator can fix it, the user can wait
            raise Unavailable(f"the background remover could not be opened (BG_REMOVAL_MODEL={self.model!r}: "
                              f"{str(err)[:300]}); without internet access, put the model in rembg's models folder "
                              "beforehand or give the path of an .onnx file") from err


def _model_file(model: str) -> Path | None:
    """The .onnx file BG_REMOVAL_MODEL names, or None when it names a rembg model."""
    if not model.lower().endswith(".onnx") and "/" not in model and "\\" not in model:
        return None
    path = Path(model).expanduser().resolve()
    if path.suffix.lower() != ".onnx":
        raise ValueError(f"BG_REMOVAL_MODEL must name an .onnx file, got {model!r}")
    if not path.is_file():
        raise ValueError(f"BG_REMOVAL_MODEL names a model file that does not exist: {model!r}")
    return path


def _operator_model_session(path: Path):
    """rembg's u2net_custom session on a model file wherever it lies.

    rembg refuses a model_path outside its models folder: its HTTP server takes model_path from the
    request, so the guard keeps clients from opening arbitrary files. Here the path is the operator's
    own setting, so the session resolves the file itself instead of moving rembg's home: setting
    U2NET_HOME would change the whole process (racy across threads, and it also moves where rembg
    looks for and downloads its named models), and linking or copying the file into rembg's home
    writes into a folder that may be read-only or shared in a container.
    """
    import onnxruntime
    from rembg.sessions.u2net_custom import U2netCustomSession

    class OperatorModelSession(U2netCustomSession):
        @classmethod
        def download_models(cls, *args, **kwargs):
            return str(kwargs["model_path"])

    return OperatorModelSession("u2net_custom", onnxruntime.SessionOptions(), model_path=str(path))
