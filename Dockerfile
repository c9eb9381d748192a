# syntax=docker/dockerfile:1
# Showroom's GPU backend. Build and push from the repo root, then rent a GPU with docker/vast.py:
#   docker build -t ghcr.io/you/showroom:latest .
#   docker build --build-arg MODEL_ID=stable-diffusion-v1-5/stable-diffusion-v1-5 -t ghcr.io/you/showroom:sd15 .
# The second bakes the model into the image (bigger image, no download at start). See docs/DEPLOY.md.
#
# CUDA: torch==2.13.0 (requirements.txt) from PyTorch's cu128 wheel index, on the CUDA 12.8 runtime image.
# The wheels bring their own CUDA libraries; the base image brings the matching runtime and tells the
# NVIDIA container runtime to refuse hosts whose driver is older than CUDA 12.8 (docker/vast.py filters
# offers on that too). Newer torch may ship other CUDA builds: change both lines together, e.g.
#   --build-arg CUDA_IMAGE=nvidia/cuda:13.0.1-runtime-ubuntu24.04 --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu130
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04
FROM ${CUDA_IMAGE}

ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
# Keep equal to the torch pin in requirements.txt (tests/deploy checks it).
ARG TORCH_VERSION=2.13.0

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Ubuntu 24.04's Python 3.12 in a virtual environment; the image's only system packages.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv \
    && groupadd --gid 10001 showroom \
    && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin showroom \
    && mkdir -p /app/data /models \
    && chown showroom:showroom /app/data /models

ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    HF_HOME=/models \
    U2NET_HOME=/models/u2net \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /app

# Dependencies in their own layers: torch (several GB, changes rarely) first, then the rest, so a
# code change rebuilds neither. The test tools listed after "# tests" in requirements.txt stay out.
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"
COPY requirements.txt ./
COPY frontend/requirements.txt frontend/
RUN sed '/^# tests/,$d' requirements.txt > requirements-runtime.txt \
    && pip install --no-cache-dir -r requirements-runtime.txt \
    && rm requirements-runtime.txt \
    && python -c "import rembg"
# (rembg's first import compiles and caches pymatting's numba code: done here, not on the first cut-out)

USER 10001:10001

# Optional: bake the model into the cache for fast cold starts. Empty = download on first start into
# the /models volume, which survives container restarts. Before the code, so a code change does not
# download the model again; bake_model.py needs nothing from backend/.
COPY docker/bake_model.py docker/
ARG MODEL_ID=""
# Place mode's background remover (BG_REMOVAL_MODEL's default) is baked with the model when one is baked.
RUN if [ -n "${MODEL_ID}" ]; then python docker/bake_model.py "${MODEL_ID}" \
      && python -c "from rembg import new_session; new_session('birefnet-general')"; fi

COPY backend/ backend/
COPY docker/onstart.sh docker/
# Same default as backend/config.py (tests/deploy checks it); `-e MODEL_ID=...` overrides it.
ENV MODEL_ID=${MODEL_ID:-stable-diffusion-v1-5/stable-diffusion-v1-5} \
    PUBLIC_BIND=true
# Declared after the bake so baked files seed a new volume instead of being discarded.
VOLUME ["/models"]

EXPOSE 8000
# Healthy while the backend answers and is not in "error" (no worker could start); the model's
# first download can take minutes, hence the long start period.
HEALTHCHECK --interval=30s --timeout=10s --start-period=900s --retries=3 \
    CMD ["python", "-c", "import json, sys, urllib.request as u; s = json.load(u.urlopen('http://127.0.0.1:8000/health', timeout=8))['status']; sys.exit(s == 'error')"]

CMD ["uvicorn", "backend.main:app", "--host", "0.0.0.0", "--port", "8000"]
