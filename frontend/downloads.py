"""A job as one ZIP, built in the page from storage: every finished picture (its generation parameters
ride in each PNG's text chunks), each 4x version that exists, and the job's manifest. Several jobs (a
product's catalog run) go in one ZIP a folder each. A product's LoRA in kohya's layout, for other tools."""

import io
import zipfile

from backend.contract import NAME_RE, job_prefix, lora_key, manifest_key, upscale_key
from backend.storage import ObjectMissing, Storage
from frontend.jobs import JobView


def job_stem(view: JobView) -> str:
    """The name a job is downloaded under: its product and style, so a folder of downloads sorts itself, and
    the start of its id, so two jobs never share a name (a name that is not a catalog name is left out)."""
    words = [word for word in (view.product, view.template) if word and NAME_RE.match(word)]
    return "-".join(["showroom", *words, view.id[:12]])


def file_stem(view: JobView, index: int) -> str:
    """The name a picture is downloaded under, alone or in the ZIP."""
    return f"{job_stem(view)}-{index + 1}"


def job_zip(storage: Storage, view: JobView) -> bytes:
    return jobs_zip(storage, {"": view})


def jobs_zip(storage: Storage, views: dict[str, JobView]) -> bytes:
    """One ZIP of several jobs, each in the folder it is keyed by ("" for the top)."""
    out = io.BytesIO()
    # PNGs are compressed already: stored as they are, the ZIP is built at the speed storage answers
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as archive:
        for folder, view in views.items():
            _write_job(archive, storage, view, f"{folder}/" if folder else "")
    return out.getvalue()


def _write_job(archive: zipfile.ZipFile, storage: Storage, view: JobView, folder: str) -> None:
    """One LIST of the job's folder, then a GET per file; a picture not stored yet is left out, and so is a job
    deleted since the page read it (a catalog grid does not read a finished job again): the others still go."""
    present = set(storage.list_files(job_prefix(view.id)))
    for img in view.images:
        for key, suffix in ((img.key, ""), (upscale_key(img.key), "-x4")):
            _add(archive, storage, present, key, f"{folder}{file_stem(view, img.index)}{suffix}.png")
    _add(archive, storage, present, manifest_key(view.id), f"{folder}job.json", zipfile.ZIP_DEFLATED)


def _add(archive: zipfile.ZipFile, storage: Storage, present: set[str], key: str, name: str,
         compression: int | None = None) -> None:
    if key not in present:
        return
    try:
        data = storage.get(key)
    except ObjectMissing:  # deleted between the listing and this read
        return
    archive.writestr(name, data, compress_type=compression)


CLONEOFSIMO_REFUSAL = ("No LoRA download: it was uploaded in cloneofsimo's layout, whose weights are numbered rather "
                       "than named after the model's parts, so it cannot be written out for AUTOMATIC1111, Forge and "
                       "ComfyUI. Use the original file you uploaded (AUTOMATIC1111 reads it with the lora_diffusion "
                       "extension).")


def kohya_refusal(storage: Storage, key: str) -> str | None:
    """Why a stored LoRA has no kohya file, from its header alone (two range reads: a LoRA may be hundreds of MB),
    or None when it has one: what kohya_lora refuses for the files Showroom stores, said before a click that could
    only fail."""
    from backend.lora.formats import CLONEOFSIMO_PREFIX
    from backend.lora.safetensors_file import LoraFormatError, read_header_only

    try:
        header, _ = read_header_only(lambda length: storage.get_head(key, length))
    except LoraFormatError as e:
        return f"No LoRA download: the stored file cannot be read ({e})."
    if any(name.startswith(CLONEOFSIMO_PREFIX) for name in header):
        return CLONEOFSIMO_REFUSAL
    return None


def kohya_lora(storage: Storage, product: str, sdxl: bool | None, trigger: str | None = None) -> bytes:
    """The product's stored LoRA in kohya's layout, which AUTOMATIC1111, Forge and ComfyUI read; `sdxl` is the
    generator's model where known (it names the text encoders when the file cannot tell); the product's `trigger`
    words go into its metadata (over the file's own: they are what Showroom prompts it with), its name as the title
    where the file names none. NotExportable says why not."""
    from backend.lora.kohya_export import to_kohya  # numpy and the LoRA readers: only when a LoRA is downloaded

    return to_kohya(storage.get(lora_key(product)), sdxl=sdxl, trigger=trigger, title=product)
