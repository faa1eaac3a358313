# The README's two commands: `make demo` (set up, then run the demo) and
# `make test` (set up, `make lint`, then the whole test suite).  `make lint`
# runs ruff and mypy (on what pyproject.toml's [tool.mypy] names).
# `make bench` rewrites the tables of docs/benchmarks.md and its chart;
# `make drill` runs the outage drill of docs/reliability.md.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test lint bench drill format clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --editable '.[test]'
	touch $@

demo: install
	$(BIN)/python examples/demo.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache .mypy_cache eventlib-*.sqlite*

# `make bench ARGS=--quick` for a smoke run; ARGS go to benchmarks.run.
bench: $(VENV)/.bench-installed
	$(BIN)/python -m benchmarks.run $(ARGS)

$(VENV)/.bench-installed: $(VENV)/.installed pyproject.toml
	$(BIN)/python -m pip install --quiet --editable '.[test,bench]'
	touch $@

drill: install
	cd examples && ../$(BIN)/python outage_drill.py
