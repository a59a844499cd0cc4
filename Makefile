# Self-installing targets: every target creates .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
# The CPU build of torch is installed first so that no dependency pulls a CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test lint install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q $(TORCH_SPEC)

$(VENV)/.core: pyproject.toml | $(BIN)/python
	$(PIP) install -q -e .
	@touch $@

$(VENV)/.test: pyproject.toml $(VENV)/.core
	$(PIP) install -q -e ".[test]"
	@touch $@

install: $(VENV)/.core

# `make demo DEMO_ARGS="--minutes 1"` for a short run (CI does that before the tests).
DEMO_ARGS ?=

demo: $(VENV)/.core
	$(BIN)/detris demo $(DEMO_ARGS)

# The browser test drives Debian's Chromium through its chromedriver (no browser download: the
# network reaches only package registries). Installed here when missing and apt-get is usable as root;
# otherwise that one test skips, naming the missing binary.
test: $(VENV)/.test
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "make test: installing chromium and chromium-driver for the browser test"; \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      chromium chromium-driver >/dev/null; } || echo "make test: could not install chromium; the browser test will skip"; \
	  else \
	    echo "make test: no chromium and no apt-get as root; the browser test will skip"; \
	  fi; \
	fi
	$(BIN)/python -m ruff check src tests benchmarks tools
	$(BIN)/python -m mypy
	$(BIN)/python -m pytest -q

lint: $(VENV)/.test
	$(BIN)/python -m ruff check src tests benchmarks tools
	$(BIN)/python -m mypy

clean:
	rm -rf $(VENV) runs .pytest_cache
