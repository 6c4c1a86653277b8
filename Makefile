# Two commands do all the set-up on a fresh machine (python3, pip, make, git):
#   make demo   create .venv, install, run the confidential-serving flow end to end
#   make test   install what the tests need and run the whole suite (every tier)
#   make test-quick   the unit tier only (no server, no TensorFlow, no child process): seconds
#   make check  lint (ruff), format (ruff format --check), types (mypy src), import contracts
#   make cluster-demo   two KBS on one PostgreSQL, three attested replicas behind nginx (layer 4),
#                       killed and restarted under load, the key revoked (needs root or sudo for
#                       the Debian packages)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
BENCH_VENV := .venv-bench

.PHONY: install test test-quick check demo cluster-demo system-deps bench bench-deps bench-serving clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-install only when the project's dependencies change.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --disable-pip-version-check -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install --disable-pip-version-check -q -e '.[test]'
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed-test
	$(BIN)/pip install --disable-pip-version-check -q -e '.[test,dev]'
	touch $@

$(VENV)/.installed-postgres: $(VENV)/.installed
	$(BIN)/pip install --disable-pip-version-check -q -e '.[postgres]'
	touch $@

install: $(VENV)/.installed

# Debian packages of tests/test_cluster.py and `make cluster-demo`, installed when missing:
# nginx with its stream module (nginx-light builds it as a separate module package) and the
# PostgreSQL server; and kubectl (Debian's kubernetes-client) for docs/deployment.md's client-side
# dry runs. The package lists are refreshed only if a first attempt fails.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
APT_INSTALL = DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends

system-deps:
	@nginx=$$(command -v nginx || echo /usr/sbin/nginx); missing=""; \
	if ! test -x $$nginx; then missing="nginx-light libnginx-mod-stream"; \
	elif $$nginx -V 2>&1 | grep -q -- '--with-stream=dynamic' && \
	     ! test -e /usr/lib/nginx/modules/ngx_stream_module.so; then missing="libnginx-mod-stream"; fi; \
	command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	    missing="$$missing postgresql"; \
	command -v kubectl >/dev/null || missing="$$missing kubernetes-client"; \
	if [ -n "$$missing" ]; then \
	    echo "installing Debian packages: $$missing"; \
	    $(APT_INSTALL) $$missing || { $(SUDO) apt-get update -q && $(APT_INSTALL) $$missing; }; \
	fi

test: $(VENV)/.installed-test system-deps
	$(BIN)/python -m pytest

# The tiers are pytest markers (tests/conftest.py assigns them): unit, integration, e2e.
test-quick: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q -m unit

demo: install
	$(BIN)/python examples/demo.py

cluster-demo: $(VENV)/.installed-postgres system-deps
	$(BIN)/python examples/cluster.py

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

CHECKED := src tests examples benchmarks

check: $(VENV)/.installed-dev
	$(BIN)/ruff check $(CHECKED)
	$(BIN)/ruff format --check $(CHECKED)
	$(BIN)/mypy src
	$(BIN)/lint-imports --no-cache

clean:
	rm -rf $(VENV) $(BENCH_VENV) .demo .cluster-demo .pytest_cache .hypothesis
