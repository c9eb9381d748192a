"""`make gpu-wheels`: the wheels a bare GPU box (Python 3.12, PyTorch, transformers, no internet) lacks to
run `make gpu-check`, downloaded here into a git-ignored folder that travels with the working tree.

The versions are the ones this project's environment resolved (so they fit together); --no-deps, so
nothing the GPU box already has (numpy, pillow, torch) is shadowed by another build.
"""

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

# The backend's own needs beyond what that box ships (see the device tool's KINDS.md), and theirs.
# opentelemetry-api: fastapi imports it at `import fastapi` (fastapi/telemetry), and the box lacks it.
# Not here: importlib-metadata (diffusers declares it but imports it only before Python 3.8), and what
# the box has: python-dateutil (botocore), anyio, click, h11, httpx, typing-extensions, annotated-doc.
MISSING = ("diffusers", "fastapi", "starlette", "uvicorn", "python-multipart", "pydantic", "pydantic-core",
           "pydantic-settings", "python-dotenv", "annotated-types", "typing-inspection", "opentelemetry-api",
           "boto3", "botocore", "jmespath", "s3transfer", "replicate")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64", "any")


def main(folder: str = ".whl") -> int:
    Path(folder).mkdir(exist_ok=True)
    pins = [f"{name}=={version(name)}" for name in MISSING]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
               "3.12", "--implementation", "cp", "-d", folder]
    for platform in PLATFORMS:
        command += ["--platform", platform]
    result = subprocess.run(command + pins)
    size = sum(p.stat().st_size for p in Path(folder).glob("*.whl")) / 2**20
    print(f"{len(list(Path(folder).glob('*.whl')))} wheels, {size:.1f} MiB in {folder}/")
    return result.returncode


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
