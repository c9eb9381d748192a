"""What every page shares, made once: the settings, the API client, the store, and short-lived caches.

Cached functions take the backend URL or the storage URL as an argument, so two configurations in
one process (tests, a settings change) never share an entry.
"""

import hashlib
import io
import json
from dataclasses import dataclass, field, replace

import streamlit as st
from PIL import Image

from backend.contract import lora_key
from backend.storage import Storage, StorageError, open_storage
from frontend import downloads, placement, speed
from frontend.client import BackendError, BackendOffline, ShowroomClient
from frontend.jobs import JobPage, JobView, newest_finished, recent_jobs
from frontend.settings import Settings, load_settings
from frontend.speed import Speed
from frontend.trainings import TrainingView, load_training


def settings() -> Settings:
    return load_settings()


def code_version() -> int:
    """Changes when Streamlit reloads the modules the kept client and store come from (new code on a running
    server: a git push on Streamlit Community Cloud, an edit under `make run`). Part of their cache keys: an
    object the old code made raises the old code's error classes, which the new code's `except` lets through
    (a refused Add product crashed the page)."""
    return hash((ShowroomClient, BackendError, Storage, StorageError))


@st.cache_resource(show_spinner=False)
def _client(base_url: str, api_key: str | None, code: int) -> ShowroomClient:
    return ShowroomClient(base_url, api_key)


def client() -> ShowroomClient:
    s = settings()
    return _client(s.backend_url, s.api_key, code_version())


@st.cache_resource(show_spinner=False)
def _storage(url: str, endpoint: str | None, key: str | None, secret: str | None, region: str | None,
             code: int) -> Storage:
    return open_storage(url, endpoint_url=endpoint, access_key=key, secret_key=secret, region=region,
                        interactive=True)


def storage() -> Storage | None:
    """The results store, or None when STORAGE_URL is not set; StorageError when it cannot be opened
    (a malformed STORAGE_URL, a folder that cannot be made), so pages show why instead of a traceback."""
    s = settings()
    if not s.storage_url:
        return None
    try:
        return _storage(*s.storage_args, code_version())
    except (ValueError, OSError) as e:
        raise StorageError(f"STORAGE_URL cannot be opened: {e}") from None


DEFAULT_NATIVE = 512  # SD 1.5's, for a backend whose /health does not say (older ones)
PICTURE_SCAN = 60     # finished jobs looked at for the pictures of products without a packshot


@dataclass(frozen=True)
class Health:
    state: str            # online, loading, degraded, error, offline; refused: it answers, but not to this app's key
    label: str
    detail: str | None = None
    gpus: int = 0         # distinct GPUs, however many workers share them
    workers: int = 0
    pending: int = 0
    upscaler: str = "unknown"   # off, replicate, local; unknown when the backend did not say
    devices: tuple[str, ...] = field(default_factory=tuple)
    native_size: int = DEFAULT_NATIVE   # the model's own size: what canvas presets are sized around

    @property
    def can_generate(self) -> bool:
        """Jobs are accepted while the model loads (they wait in the queue), not when nothing runs."""
        return self.state in ("online", "loading", "degraded")

    @property
    def waiting_for(self) -> str:
        """What a queued job or training waits for, in words true of this box: a GPU only where there is one."""
        return "a GPU" if self.gpus else "the generator"

    @property
    def upscale_refusal(self) -> str | None:
        """Why an Upscale request can only fail right now, or None when it may work."""
        if self.state == "offline":
            return "The generator is offline, so pictures cannot be enlarged right now"
        if self.state == "refused":
            return "The backend refused this app's API key, so pictures cannot be enlarged"
        if self.upscaler == "off":
            return "Enlarging pictures 4x is not switched on in this Showroom"
        return None

    @property
    def upscale_howto(self) -> str | None:
        """For whoever runs the generator (a tooltip: the shop owner need not read settings' names)."""
        if self.upscaler == "off" and self.state != "offline":
            return ("Whoever runs the generator can switch it on with UPSCALER=replicate and a REPLICATE_API_TOKEN, "
                    "or with UPSCALER=local (on the GPU box itself).")
        return None


_STATES = {"ok": ("online", "Online"), "starting": ("loading", "Loading the model"),
           "degraded": ("degraded", "Degraded"), "error": ("error", "Error")}
KEY_REFUSED = "the backend refused this app's API key: set API_KEY to the backend's key"


def count_gpus(devices: tuple[str, ...]) -> int:
    """Distinct accelerators among the workers' devices: three workers on cuda:0 are one GPU
    (a bare "cuda" or "mps" is that backend's device 0, as in torch)."""
    return len({d if ":" in d else f"{d}:0" for d in devices if d.startswith(("cuda", "mps"))})


def health_from(body: dict) -> Health:
    """The backend's /health answer, as the pages use it; an answer of another shape is an error state."""
    try:
        state, label = _STATES.get(body.get("status"), ("error", "Error"))
        workers = body.get("workers") or []
        devices = tuple(str(w.get("device", "?")) for w in workers)
        detail = body.get("detail")
        return Health(state, label, None if detail is None else str(detail), gpus=count_gpus(devices),
                      workers=len(workers), pending=int((body.get("queue") or {}).get("pending") or 0),
                      upscaler=str(body.get("upscaler") or "unknown"), devices=devices,
                      native_size=_native_size(body.get("native_size")))
    except (AttributeError, TypeError, ValueError):
        return Health("error", "Error", "the backend's /health answer was not understood (is BACKEND_URL right?)")


def _native_size(value) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 64 <= value <= 2048 and value % 8 == 0:
        return value
    return DEFAULT_NATIVE


@st.cache_data(ttl=5, show_spinner=False)
def health(base_url: str, key_id: str) -> Health:
    """/health (public), and whether this app's key is accepted: a wrong key would be refused on every click."""
    try:
        body = client().health()
    except BackendOffline:
        return Health("offline", "Offline", f"the generator at {base_url} is not answering")
    except BackendError as e:
        return Health("error", "Error", e.message)
    found = health_from(body)
    if found.can_generate and _key_refused(base_url, key_id):
        return replace(found, state="refused", label="Key refused", detail=KEY_REFUSED)
    return found


def _key_refused(base_url: str, key_id: str) -> bool:
    """Asked of the catalog, which every page reads anyway: kept a minute once it answers, so a good key costs
    no request of its own; a refusal is not kept, so a wrong key costs one each time health is read again."""
    try:
        catalog(base_url, key_id)
    except BackendError as e:
        return e.status == 401
    return False


def current_health() -> Health:
    return health(settings().backend_url, _key_id())


def queue_changed() -> None:
    """After a submit or a cancel: the header's queue count is read again, not kept for its 5 s (a canceled job
    went on showing its pictures in the queue until the header's next refresh)."""
    health.clear()


@st.cache_data(ttl=60, show_spinner=False)
def catalog(base_url: str, key_id: str) -> dict:
    """Products and templates; raises BackendError (failures are not cached)."""
    return client().catalog()


def current_catalog() -> dict:
    return catalog(settings().backend_url, _key_id())


def style_names() -> dict[str, str]:
    """Each style's name by its id, from the catalog; {} while the generator cannot be asked (History, which
    names a job's style with it, works without the generator)."""
    if current_health().state in ("offline", "refused"):
        return {}
    try:
        return {str(t["id"]): str(t["name"]) for t in current_catalog().get("templates", [])}
    except (BackendError, KeyError, TypeError, AttributeError):
        return {}


def _key_id() -> str:
    """The key's fingerprint, not the key, tells cache entries apart: a wrong key must not reuse a good answer."""
    return hashlib.sha256((settings().api_key or "").encode()).hexdigest()[:16]


@st.cache_data(max_entries=64, ttl=3600, show_spinner=False)
def image_bytes(storage_url: str, key: str) -> bytes:
    """An image object: written once and never changed, so it is safe to keep a while. Bounded: a
    small host (Community Cloud) must not fill its memory with full-size PNGs."""
    return storage().get(key)


@st.cache_data(max_entries=512, ttl=6 * 3600, show_spinner=False)
def thumbnail(storage_url: str, key: str, size: int = 384) -> bytes:
    with Image.open(io.BytesIO(image_bytes(storage_url, key))) as img:
        img.thumbnail((size, size))
        out = io.BytesIO()
        img.convert("RGB").save(out, format="JPEG", quality=85)
    return out.getvalue()


@st.cache_data(ttl=5, show_spinner=False)
def history(storage_url: str, limit: int, before: str | None = None, product: str | None = None,
            status: str | None = None) -> JobPage:
    return recent_jobs(storage(), limit, before, product, status)


def generator_speed(mode: str | None) -> Speed | None:
    """This generator's measured speed for jobs of `mode` (frontend/speed.py), None until it has finished
    enough of them or while storage cannot be read."""
    url = settings().storage_url
    if not url:
        return None
    try:
        return speed.measured(_measured_jobs(url), mode)
    except StorageError:
        return None


@st.cache_data(ttl=300, show_spinner=False)
def _measured_jobs(storage_url: str) -> list[JobView]:
    """The jobs a speed is measured on: the finished ones among the newest few dozen (a speed moves slowly)."""
    return newest_finished(storage(), speed.SCAN)


@st.cache_data(ttl=60, show_spinner=False)
def pictures_by_product(storage_url: str) -> dict[str, str]:
    """Each product's newest finished picture (its storage key), from one look at the newest jobs: what a
    product without a packshot shows as its picture."""
    found: dict[str, str] = {}
    for job in recent_jobs(storage(), PICTURE_SCAN, status="succeeded").jobs:
        done = [img.key for img in job.images if img.status == "succeeded" and not img.missing]
        if job.product and done and job.product not in found:
            found[job.product] = done[0]
    return found


def product_records() -> list[dict]:
    """The products: from the generator's catalog; with the generator off, from storage, where the
    records live. StorageError when neither can be read."""
    if current_health().state != "offline":
        try:
            return current_catalog().get("products", [])
        except BackendError:
            pass
    store = storage()
    if store is None:
        return []
    found = []
    for key in store.list_files("products/"):
        if key.endswith(".json"):
            try:
                record = json.loads(store.get(key))
            except (StorageError, ValueError):
                continue
            if isinstance(record, dict) and isinstance(record.get("name"), str):
                found.append(record)
    return sorted(found, key=lambda p: p.get("name", ""))


def product_triggers(products: list[dict] | None = None) -> dict[str, str | None]:
    """Each product's trigger words, by its name (of `products` when the caller has read them); {} when neither
    the generator nor storage can say."""
    try:
        products = product_records() if products is None else products
    except StorageError:
        return {}
    return {p["name"]: p.get("trigger") for p in products if isinstance(p.get("name"), str)}


def latest_trainings(products: list[dict]) -> list[TrainingView]:
    """Each product's latest training, at most 5 s old; those storage cannot give are left out."""
    found = []
    for product in products:
        if not product.get("training") or not isinstance(product.get("name"), str):
            continue
        try:
            training = training_glance(settings().storage_url, product["training"])
        except StorageError:
            continue
        if training is not None:
            found.append(training)
    return found


def test_picture_jobs(products: list[dict]) -> dict[str, str]:
    """The jobs of test pictures the backend made when a product learnt (its latest training's, and those of
    the LoRA it keeps while it learns again), by job id -> the product's name: History tells them from the
    owner's own jobs."""
    return {job_id: training.product for training in latest_trainings(products)
            for job_id in (training.check_job, training.earlier_check_job) if job_id}


def training(training_id: str) -> TrainingView | None:
    """A training's manifest, read fresh from storage (it moves every few seconds)."""
    store = storage()
    return load_training(store, training_id) if store is not None else None


@st.cache_data(max_entries=256, ttl=5, show_spinner=False)
def training_glance(storage_url: str, training_id: str) -> TrainingView | None:
    """The same, at most 5 s old: for the product list, which reads one per product on every run."""
    return training(training_id)


def kohya_refusal(product: str) -> str | None:
    """Why the product's stored LoRA has no kohya file to download, or None when it has one. StorageError when
    storage cannot say (ObjectMissing: there is no file)."""
    key = lora_key(product)
    store = storage()
    return _kohya_refusal(settings().storage_url, key, store.version(key))


@st.cache_data(max_entries=64, ttl=6 * 3600, show_spinner=False)
def _kohya_refusal(storage_url: str, key: str, version: str) -> str | None:
    """Read once per version of the file: a LoRA taught again, or uploaded again, is stored under the same key."""
    return downloads.kohya_refusal(storage(), key)


@st.cache_data(max_entries=16, ttl=60, show_spinner=False)
def packshot(storage_url: str, key: str) -> bytes:
    """A product's packshot: short-lived, since a product removed and added again reuses its key."""
    return storage().get(key)


@dataclass(frozen=True)
class Cutout:
    png: bytes | None = None       # the product, RGBA, trimmed to its box
    refusal: str | None = None     # why the backend found nothing to cut out (its own words)


CUTOUTS_KEPT = 8
REFUSALS_KEPT = (400, 413, 415, 422)  # answers about the photo itself: the same photo gets the same answer


def cutout(photo: tuple[str, bytes, str]) -> Cutout:
    """The backend's cut-out of an uploaded photo, asked once per photo in a session: every widget change
    reruns the page, and background removal costs seconds. A refusal is kept as well; BackendError for
    anything else (the backend offline, a wrong key), which is not kept, so the next rerun asks again."""
    digest = _photo_digest(photo)
    kept = st.session_state.setdefault("cutouts", {})
    if digest not in kept:
        try:
            kept[digest] = Cutout(png=client().cutout(photo))
        except BackendError as e:
            if e.status not in REFUSALS_KEPT:  # BackendOffline has no status: raised, not kept
                raise
            kept[digest] = Cutout(refusal=e.message)
        while len(kept) > CUTOUTS_KEPT:
            kept.pop(next(iter(kept)))
    return kept[digest]


def kept_cutout(photo: tuple[str, bytes, str]) -> Cutout | None:
    """The cut-out (or refusal) this session already has for the photo, without asking the backend."""
    return st.session_state.get("cutouts", {}).get(_photo_digest(photo))


def _photo_digest(photo: tuple[str, bytes, str]) -> str:
    return hashlib.sha256(settings().backend_url.encode() + b"\0" + photo[1]).hexdigest()


@st.cache_data(max_entries=16, show_spinner=False)
def cutout_on_checkerboard(png: bytes) -> bytes:
    return placement.on_checkerboard(png)


@st.cache_data(max_entries=16, show_spinner=False)
def fills_the_photo(cutout_png: bytes, photo: bytes) -> bool:
    return placement.fills_the_photo(cutout_png, photo)


@st.cache_data(max_entries=8, show_spinner=False)
def restyle_preview(photo: bytes, width: int, height: int) -> tuple[bytes, bytes] | None:
    return placement.restyle_preview(photo, width, height)


@st.cache_data(max_entries=32, show_spinner=False)
def canvas_preview(png: bytes, width: int, height: int, x: float, y: float, scale: float, shadow: bool = False,
                   reflection: float = 0.0) -> bytes:
    return placement.canvas_preview(png, width, height, x, y, scale, shadow, reflection)


@st.cache_data(max_entries=16, ttl=60, show_spinner=False)
def added_photos(storage_url: str, product: str) -> list[tuple[str, bytes]]:
    """The photos a product was added with, kept in storage to teach it from: each one's key and a small JPEG of
    it, in their order. Short-lived, and cleared when this session adds a product: one added again under its name
    reuses the keys. The photos themselves are read on the Teach click only."""
    from backend.contract import product_photos_prefix  # here: this section was added at the file's end

    def number(key: str) -> int:
        stem = key.rsplit("/", 1)[-1].removesuffix(".png")
        return int(stem) if stem.isdigit() else -1

    store = storage()
    found = []
    for key in sorted(store.list_files(product_photos_prefix(product)), key=number):
        if number(key) >= 0:
            with Image.open(io.BytesIO(store.get(key))) as img:
                img.thumbnail((128, 128))
                small = img.convert("RGBA")
            flat = Image.new("RGB", small.size, (255, 255, 255))  # a cut-out's clear parts white, not black
            flat.paste(small, mask=small.getchannel("A"))
            out = io.BytesIO()
            flat.save(out, format="JPEG", quality=85)
            found.append((key, out.getvalue()))
    return found
