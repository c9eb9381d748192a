# Two commands: `make run` (the whole system) and `make test` (the tests). Both install what they
# need into .venv the first time.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: run test browser redis reliability bench gpu-wheels gpu-check

$(VENV)/.installed: requirements.txt frontend/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	# rembg's first import compiles pymatting's numba code (about 45 s) and caches it: pay it here, once
	$(PY) -c "import rembg"
	touch $@

run: $(VENV)/.installed
	$(PY) -m backend.tools.dev

# The browser test drives Debian's Chromium (Playwright cannot download browsers here).
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } \
	  || { echo "install Chromium (apt-get install chromium) for the browser test"; exit 1; }

# The EXECUTOR=celery tests start Debian's redis-server on free ports (Celery's broker).
redis:
	@command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; } \
	  || { echo "install Redis (apt-get install redis-server) for the celery tests"; exit 1; }

test: $(VENV)/.installed browser redis
	$(PY) -m pytest

bench: $(VENV)/.installed
	$(PY) -m backend.tools.bench --quick

# On a GPU box: `make gpu-wheels` here first (the box cannot download), then `make gpu-check` there.
# It measures everything worth measuring in about 8 minutes and writes docs/gpu/gpu-check-<date>-<gpu>.json.
gpu-wheels: $(VENV)/.installed
	$(PY) -m backend.tools.gpu_wheels .whl

gpu-check:
	@if [ -d .whl ]; then python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
	  --target /tmp/showroom-site .whl/*.whl; fi
	PYTHONPATH=/tmp/showroom-site:. PYTHONUNBUFFERED=1 python3 -m backend.tools.gpu_check --out $${OUT:-docs/gpu}
