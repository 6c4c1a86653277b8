# Two commands do all the set-up on a fresh machine (python3, pip, make, git):
#   make demo   create .venv, install, run the confidential-serving flow end to end
#   make test   install what the tests need and run the whole suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install test demo bench lint clean

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

bench: install
	$(BIN)/python benchmarks/protected_files.py

lint: install
	$(BIN)/pip install --disable-pip-version-check -q -e '.[dev]'
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy src

clean:
	rm -rf $(VENV) .demo .pytest_cache .hypothesis
