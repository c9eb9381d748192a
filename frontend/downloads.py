"""A job as one ZIP, built in the page from storage: every finished picture (its generation parameters
ride in each PNG's text chunks), each 4x version that exists, and the job's manifest. Several jobs (a
product's catalog run) go in one ZIP a folder each."""

import io
import zipfile

from backend.contract import job_prefix, manifest_key, upscale_key
from backend.storage import Storage
from frontend.jobs import JobView


def file_stem(job_id: str, index: int) -> str:
    """The name a picture is downloaded under, alone or in the ZIP."""
    return f"showroom-{job_id[:12]}-{index + 1}"


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
    """One LIST of the job's folder, then a GET per file; a picture not stored yet is left out."""
    present = set(storage.list_files(job_prefix(view.id)))
    for img in view.images:
        for key, suffix in ((img.key, ""), (upscale_key(img.key), "-x4")):
            if key in present:
                archive.writestr(f"{folder}{file_stem(view.id, img.index)}{suffix}.png", storage.get(key))
    archive.writestr(f"{folder}job.json", storage.get(manifest_key(view.id)), compress_type=zipfile.ZIP_DEFLATED)
