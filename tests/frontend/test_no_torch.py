"""The frontend runs with only frontend/requirements.txt: torch, diffusers and the server stack unavailable."""

import json
import subprocess
import sys

from tests.frontend.conftest import REPO, SMALL, frontend_env

HEAVY = ("torch", "diffusers", "transformers", "fastapi", "pydantic-settings", "uvicorn", "peft", "rembg",
         "onnxruntime")
# The backend modules written for the frontend too: standard library, boto3, PIL and numpy only. The LoRA file
# reader names a LoRA's trigger words on the Products page; its kohya export is built on a download's click; the
# place preview is finished by the job's own composite, and restyle's by its own crop (backend.images).
LIGHT_BACKEND = {"backend", "backend.contract", "backend.storage", "backend.place", "backend.place.layout",
                 "backend.place.composite", "backend.images",
                 "backend.lora", "backend.lora.safetensors_file", "backend.lora.formats", "backend.lora.kohya_export"}


def test_frontend_runs_without_torch_or_diffusers(backend):
    job = backend.wait_job(backend.submit({"prompt": "a scarf", "num_images": 2, **SMALL})["id"])
    env = {k: v for k, v in backend.env.items() if k not in ("PYTHONPATH",)} | frontend_env(backend)
    run = subprocess.run([sys.executable, str(REPO / "tests" / "frontend" / "no_heavy_imports.py"), job["id"]],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["exceptions"] == []
    assert result["heavy"] == []
    assert {"backend.contract", "backend.storage"} <= set(result["backend_modules"]) <= LIGHT_BACKEND, \
        "only the light modules (contract, storage, images, place's layout and composite, the torch-free LoRA " \
        "files) may be imported"
    assert result["images"] == 2, "the job's images are read from storage and shown"
    assert "generate" in result["buttons"]


def test_frontend_requirements_name_no_heavy_package():
    lines = (REPO / "frontend" / "requirements.txt").read_text().splitlines()
    names = {line.split("==")[0].split(">")[0].strip().lower() for line in lines if line.strip()
             and not line.startswith("#")}
    assert names and not names & set(HEAVY), names
