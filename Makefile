# Two entry points for a fresh machine: `make run` (the main job) and `make test` (the suite).
# Both create .venv if it is missing, install scalelab into it and make sure Fashion-MNIST is here.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The main job needs scalelab with its analysis extra (a fresh install 39 s on the 2-core VM); the
# suite and the linters also the dev one (56 s). Not --no-compile, though it halves the install:
# where PYTHONDONTWRITEBYTECODE is set (this VM) every process would then compile its imports from
# source, 7.3 s instead of 2.4 s, and the suite starts dozens of processes.
STAMP := $(VENV)/.scalelab-installed
RUN_STAMP := $(VENV)/.scalelab-run-installed
ARGS ?=

.PHONY: run test data lint bench bench-anchors clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev,analysis]'
	@touch $(STAMP) $(RUN_STAMP)

$(RUN_STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[analysis]'
	@touch $(RUN_STAMP)

data:
	@bash scripts/ensure-data.sh

run: $(RUN_STAMP) data
	$(PY) -m experiments.scale_grid $(ARGS)

# Two workers (CI's machine has two cores; most of a test is single-threaded XLA compilation), each
# test file on one worker so that its programs compile once (conftest: one compile cache per worker).
test: $(STAMP) data
	$(PY) -m pytest -q -n 2 --dist loadfile $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check scalelab experiments analysis tests
	$(PY) -m ruff format --check scalelab experiments analysis tests
	$(PY) -m mypy

bench: $(RUN_STAMP) data
	$(PY) -m experiments.bench $(ARGS)

# The benchmark with PyHessian raced beside scalelab's curvature: installs torch (CPU) and PyHessian first.
bench-anchors: $(RUN_STAMP) data
	$(PY) -m pip install -q -e '.[anchors]'
	$(PY) -m experiments.bench --pyhessian $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
