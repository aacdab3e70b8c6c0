# The two README commands: `make demo` (the main job) and `make test` (the suite); `make lint` is ruff.
# Each creates its own virtual environment in .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# glibc malloc for XLA:CPU training: reuse each step's scratch block instead of faulting it in anew (bench/common.py)
HOST_MALLOC := glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967295:glibc.malloc.hugetlb=1

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

.PHONY: demo test test-slow lint install
install: $(STAMP)

demo: $(STAMP)
	GLIBC_TUNABLES=$${GLIBC_TUNABLES:-$(HOST_MALLOC)} $(PY) -m probes study --config configs/study_default.py --out runs/study

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

lint: $(STAMP)
	$(VENV)/bin/ruff check .
