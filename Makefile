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

.PHONY: book test env assets grid mathjax html published chromium benchmark clean

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

# MathJax for an offline site: the pages' math must render with no network, so MathJax 3 is
# copied out of the django-static-mathjax wheel (a pyproject dependency; it is plain static
# files) into a build folder that _config.yml names in html_static_path.
MATHJAX_STATIC := _build/static/mathjax
mathjax: env
	$(PY) scripts/copy_mathjax.py $(MATHJAX_STATIC)

html: env mathjax
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

# ---- Slurm: a real single-node cluster on this machine (scripts/slurm-cluster.sh, as root) ----
# `biobench grid CONFIG --executor slurm` on it, its tests, and the overhead benchmark. The
# cluster stays up after these targets; `make slurm-stop` stops its daemons by their PIDs.
SLURM_CLUSTER := scripts/slurm-cluster.sh
WITH_SLURM := eval "$$($(SLURM_CLUSTER) env)" &&
.PHONY: slurm-start slurm-stop slurm-status test-slurm benchmark-slurm

slurm-start:
	$(SLURM_CLUSTER) install
	$(SLURM_CLUSTER) start

slurm-stop:
	$(SLURM_CLUSTER) stop

slurm-status:
	$(SLURM_CLUSTER) status

test-slurm: env slurm-start
	$(WITH_SLURM) $(PY) -m pytest tests/test_slurm.py

benchmark-slurm: env assets slurm-start
	$(WITH_SLURM) $(PY) benchmarks/slurm_overhead.py
