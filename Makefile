# make demo   : create .venv, install, train ASDT on the synthetic default (CPU, minutes)
# make test   : create .venv, install, run the test suite
# make pipeline: install, then the whole WSSS pipeline on the synthetic default (ASDT -> pseudo masks -> second
#                stage -> evaluation; CPU, about 10 minutes on 2 idle cores)
# make bench  : run every benchmark, write benchmarks/RESULTS.md (CPU: about 5-8 minutes)
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python

.PHONY: install demo pipeline test lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

demo: install
	$(PY) -m asdt_lightning.train

pipeline: install
	$(PY) -m asdt_lightning.pipeline

test: install
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

bench: install
	$(PY) -m benchmarks.run_all

clean:
	rm -rf outputs multirun .pytest_cache
