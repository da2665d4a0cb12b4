# The README's two commands:
#   make book   create .venv, fetch the offline assets, run the grid, build the HTML book
#   make test   create .venv if missing, install Debian chromium if missing, run pytest
# Everything runs offline: only the package registries (PyPI, Debian) are reached.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := book

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# the one command line (biobench/cli.py); `biobench --help` lists its subcommands
BIOBENCH := $(VENV)/bin/biobench
GRID ?= configs/offline.toml
JB_FLAGS ?= -W -n --keep-going

# The hub is unreachable: fail fast instead of retrying each lookup for ~46 s.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
# Notebooks execute in their own folder, so the store path must be absolute.
export BIOBENCH_STORE ?= $(CURDIR)/results/biobench.sqlite
# The published BioBench leaderboard, read (never copied) from the shared folder beside us.
PUBLISHED_RESULTS := $(abspath $(CURDIR)/../shared/reference/biobench_results.json)
ifneq ($(wildcard $(PUBLISHED_RESULTS)),)
export BIOBENCH_PUBLISHED_RESULTS ?= $(PUBLISHED_RESULTS)
endif

# pip on this machine repeats a harmless "WARNING: Location ... is ignored" per package.
QUIET_PIP := { grep -v 'WARNING: Location' || true; }

.PHONY: book test env assets grid html published chromium benchmark clean

book: env assets grid html

env: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --progress-bar off -e '.[test]' 2>&1 | $(QUIET_PIP)
	touch $@

assets: env
	$(BIOBENCH) assets

grid: env
	$(BIOBENCH) grid $(GRID)

# the published pages import the leaderboard themselves; this imports it ahead, on request
published: env
	$(BIOBENCH) published

html: env
	$(VENV)/bin/jupyter-book build . $(JB_FLAGS)

chromium:
	command -v chromium >/dev/null || { apt-get update && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium; }

test: env chromium
	$(PY) -m pytest

benchmark: env assets
	$(PY) benchmarks/cli_latency.py
	$(PY) benchmarks/book_build.py --grid $(GRID)

clean:
	rm -rf _build book/runs
