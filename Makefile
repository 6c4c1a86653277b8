# Two commands do all the set-up on a fresh machine (python3, pip, make, git):
#   make demo   create .venv, install, run the confidential-serving flow end to end
#   make test   install what the tests need and run the whole suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
BENCH_VENV := .venv-bench

.PHONY: install test demo bench bench-deps bench-serving lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-install only when the project's dependencies change.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --disable-pip-version-check -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install --disable-pip-version-check -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest

demo: install
	$(BIN)/python -m sealserve.tools.demo

# KServe, the reference server of benchmarks/serving.py, in a venv of its own: kserve needs
# protobuf<7, the project >=7. It gets pyproject.toml's `bench` extra and the project's own
# tensorflow and numpy requirements (KServe runs the same SavedModel with TensorFlow).
BENCH_REQUIREMENTS = $(PYTHON) -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print(*p["optional-dependencies"]["bench"], *(d for d in p["dependencies"] if d.startswith(("tensorflow>", "numpy"))))'

$(BENCH_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --disable-pip-version-check -q $$($(BENCH_REQUIREMENTS))
	touch $@

bench-deps: $(BENCH_VENV)/.installed

bench-serving: install bench-deps
	$(BIN)/python benchmarks/serving.py

bench: install bench-deps
	$(BIN)/python benchmarks/protected_files.py
	$(BIN)/python benchmarks/serving.py

lint: install
	$(BIN)/pip install --disable-pip-version-check -q -e '.[dev]'
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy src

clean:
	rm -rf $(VENV) $(BENCH_VENV) .demo .pytest_cache .hypothesis
