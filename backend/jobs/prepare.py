"""Place mode's work before any image runs: cut the product out and lay it on the canvas, once per job.

It runs in a small thread pool of the API process, after the 202 has gone out: never on the event
loop, never once per image. A photo with transparency costs milliseconds; anything else goes through
the background remover (rembg on onnxruntime, which uses the GPU where onnxruntime-gpu is installed).
Its results are `jobs/<id>/cutout.png` and `jobs/<id>/layout.png`; the workers read the layout.
"""

import io
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

from backend.contract import cutout_key, packshot_key
from backend.errors import RateLimited
from backend.models import JobManifest
from backend.storage import ObjectMissing, Storage

log = logging.getLogger("showroom.prepare")
CUTOUTS_AT_ONCE = 2  # cut-outs for requests (POST /v1/cutouts, a product from a photo); jobs have their pool


def png_bytes(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


class Preparer:
    """Cut-outs and layouts. `remover_model` is BG_REMOVAL_MODEL; the remover opens on first need."""

    def __init__(self, storage: Storage, remover_model: str, threads: int = 2):
        from backend.place.cutout import BackgroundRemover

        self.storage = storage
        self.remover = BackgroundRemover(remover_model)  # checks the setting now: a bad value stops start-up
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="prepare")
        self._lock = threading.Lock()
        self._preparing: set[str] = set()
        self._answering = threading.BoundedSemaphore(CUTOUTS_AT_ONCE)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def cut_out(self, photo_png: bytes) -> Image.Image:
        """The product of a normalised photo as RGBA, trimmed to its box (NothingFound says why not)."""
        from backend.place.cutout import cut_out

        return cut_out(Image.open(io.BytesIO(photo_png)), self.remover)

    def cut_out_now(self, photo_png: bytes) -> Image.Image:
        """The same for a request someone waits on, CUTOUTS_AT_ONCE at a time: a cut-out can take seconds
        of CPU and hundreds of MB, so the rest are told to retry (RateLimited) rather than pile up."""
        if not self._answering.acquire(blocking=False):
            raise RateLimited(f"{CUTOUTS_AT_ONCE} photos are being cut out already; try again in a few seconds",
                              headers={"Retry-After": "5"})
        try:
            return self.cut_out(photo_png)
        finally:
            self._answering.release()

    def lay_out(self, job: JobManifest) -> None:
        """Write the job's cut-out and its layout (the product layer at width x height)."""
        from backend.place.layout import Placement, place

        spec = job.spec
        if job.input_key:
            cutout = self.cut_out(self.storage.get(job.input_key))
        else:  # a catalog product's packshot stands in for an upload
            cutout = Image.open(io.BytesIO(self._packshot(spec.product))).convert("RGBA")
        placement = Placement(**(spec.placement.model_dump() if spec.placement else {}))
        layer = place(cutout, spec.width, spec.height, placement)
        self.storage.put(cutout_key(job.id), png_bytes(cutout), "image/png")
        self.storage.put(job.layout_key, png_bytes(layer), "image/png")

    def _packshot(self, product: str) -> bytes:
        try:
            return self.storage.get(packshot_key(product))
        except ObjectMissing:  # the product was deleted, or its photo removed, after the job was accepted
            raise ValueError(f"product {product!r} has no packshot any more (it was deleted while the job waited); "
                             "add it again with its photo, or send a photo of the product with the job") from None

    def preparing(self, job_id: str) -> bool:
        with self._lock:
            return job_id in self._preparing

    def start(self, job: JobManifest, then: Callable[[Exception | None], None]) -> bool:
        """Lay the job out in the pool, then call `then(error)`. False if it is being prepared already."""
        with self._lock:
            if job.id in self._preparing:
                return False
            self._preparing.add(job.id)

        def run() -> None:
            error = None
            try:
                self.lay_out(job)
            except Exception as e:  # every failure is reported to `then`, which fails the images with it
                error = e
            try:
                then(error)
            except Exception:
                log.exception("job %s: what follows its preparation failed", job.id)
            finally:  # only now: until the executor holds the job, it counts as being prepared
                with self._lock:
                    self._preparing.discard(job.id)

        self.pool.submit(run)
        return True
