# dramatiq-preview — everything a fresh Debian/Ubuntu machine with Python 3 needs.
#
#   make demo    install what is missing, render the samples in examples/images with a worker
#   make test    install what is missing, run the whole test suite against a private Redis
#   make lint    ruff check, ruff format --check, mypy, the layers (import-linter), deptry
#   make bench   issue 17's targets in one table (~9 min; BENCH_QUICK=1: ~2 min, never fails)
#   make faults  the fault scenarios of docs/reliability.md, CI-sized; make soak: larger
#   make docs    the documentation site into site/ (mkdocs build --strict: no warning passes)
#   make docs-check  run the shell commands the site shows (scripts/docs-check)
#
# System packages come from apt (sudo is used when not root); Python packages go into .venv.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# HEIC/AVIF: libheif, whose HEVC and AV1 decoders and AV1 encoder are plugins on Debian 13 and
# Ubuntu 24.04 (built in on Debian 12, where the "?" entries are skipped); SVG: rsvg-convert.
# Chromium and its driver: the dashboard's browser tests (optional: where apt has no
# "chromium", as on Ubuntu, those tests skip and say why).
APT_PACKAGES := "libmagickwand-6.q16-6|libmagickwand-6.q16-7t64" poppler-utils ghostscript redis-server \
	"libvips42|libvips42t64" libheif1 "libheif-plugin-libde265?" "libheif-plugin-dav1d?" \
	"libheif-plugin-aomenc?" librsvg2-bin "chromium?" "chromium-driver?"
STAMP := $(VENV)/.installed

.PHONY: deps venv demo test lint bench faults soak docs docs-check clean

deps:
	scripts/install-system-deps $(APT_PACKAGES)

$(STAMP): setup.cfg pyproject.toml constraints.txt
	$(MAKE) deps
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e ".[flask,rabbitmq,s3,test,dev,docs]"
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(PY) examples/demo.py

test: venv
	$(PY) -m pytest

# The fault scenarios of docs/reliability.md, CI-sized (about 8 minutes); soak: FAULTS_SCALE x.
faults: venv
	$(PY) -m pytest tests/faults -m faults -rxX

soak: venv
	PYTHON=$(PY) scripts/soak $${FAULTS_SCALE:-5}

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy dramatiq_preview
	$(VENV)/bin/lint-imports
	$(PY) scripts/check-dependencies

# Every target of issue 17, one table (tests/benchmarks/bench_overhead.py); the other
# benchmarks: $(PY) -m pytest tests/benchmarks -m benchmark -s
bench: venv
	$(PY) -m pytest tests/benchmarks/bench_overhead.py -m benchmark -s -p no:cacheprovider

# The site's references are generated from the code at build time (scripts/docs_hooks.py).
docs: venv
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

# Each console/bash block of the site is run here, run by a test, or marked not run (why).
docs-check: venv
	$(PY) scripts/docs-check

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache previews site
