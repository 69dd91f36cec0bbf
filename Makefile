# Two commands do all set-up on a fresh machine with only Python 3 and pip:
#   make test   - create .venv if missing, install torch==2.13.0 (CPU wheel) then the project with [dev], run the suite
#   make demo   - the main job: train a 2-D VAE on the bundled digits and write the analysis report
# Both are safe to re-run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
BENCH_VENV := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed-stamp

.PHONY: test demo install bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

demo: $(STAMP)
	$(VENV)/bin/latentgeo demo --out report

$(BENCH_VENV)/bin/python:
	$(PYTHON) -m venv $(BENCH_VENV)

$(BENCH_STAMP): $(BENCH_VENV)/bin/python pyproject.toml
	$(BENCH_VENV)/bin/python -m pip install --quiet torch==2.13.0
	$(BENCH_VENV)/bin/python -m pip install --quiet -e ".[bench]"
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BENCH_VENV)/bin/python benchmarks/bench_metric.py
	$(BENCH_VENV)/bin/python benchmarks/bench_geodesics.py

clean:
	rm -rf $(VENV) $(BENCH_VENV) *.egg-info
