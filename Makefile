# The whole set-up on a fresh machine is `make demo` or `make test`: each creates or
# refreshes .venv and installs what the project needs (pip and Debian packages).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch is pinned: the local CPU build is picked up; an unpinned torch pulls CUDA packages.
TORCH := torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench bench-fusion system-deps clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)" -e ".[deep,slicer,web,test]"
	touch $(STAMP)

# Debian packages: Chromium (browser tests, report screenshots) and EGL/GL for VTK's
# offscreen rendering (trame-slicer). Installed only where missing.
system-deps:
	@bash scripts/install-system-deps.sh

demo: $(STAMP)
	$(VENV)/bin/mmfusion demo --output-dir demo-output

# Tests run in TEST_WORKERS processes (pytest-xdist), each test class whole in one of them (--dist loadscope:
# a class's set-up runs once). 2 workers on the 2-core machines this is built on: 458 s against 749 s in one.
# PYTHONFAULTHANDLER: a crash, even after pytest ends, prints every thread's stack, in the workers too.
TEST_WORKERS ?= 2
test: $(STAMP) system-deps
	$(VENV)/bin/ruff check .
	PYTHONFAULTHANDLER=1 $(PY) -m pytest -q Testing -n $(TEST_WORKERS) --dist loadscope

lint: $(STAMP)
	$(VENV)/bin/ruff check .

$(VENV)/.bench-installed: $(STAMP)
	$(PIP) install -q "$(TORCH)" -e ".[bench]"   # editable, as $(STAMP): a copy would shadow the checkout
	touch $@

bench: $(VENV)/.bench-installed
	$(PY) benchmarks/registration.py

# make bench-fusion DATA=/path/to/harvard_fusion_pairs (a folder with MRI_CT, MRI_PET, MRI_SPECT)
bench-fusion: $(STAMP)
	@test -n "$(DATA)" || { echo "usage: make bench-fusion DATA=/path/to/harvard_fusion_pairs"; exit 2; }
	$(PY) benchmarks/fusion_harvard.py --data "$(DATA)"

clean:
	rm -rf $(VENV) demo-output
