# langcluster: `make help` lists the targets.
.DEFAULT_GOAL := help
SHELL := /bin/bash

VENV      ?= .venv
PY        := $(VENV)/bin/python
PYTHON    ?= python3
export VIRTUAL_ENV := $(abspath $(VENV))
export PATH := $(abspath $(VENV))/bin:$(PATH)

# Debian packages of the servers the integration tests start themselves.
SERVER_PACKAGES := redis-server etcd-server
# Every CPython the package supports. `make test` runs the suite on $(PYTHON);
# `make test-versions` on each of the others, found through pyenv when it is
# installed, else as pythonX.Y on the PATH, each in a .venv-X.Y of its own.
PYTHON_VERSIONS := 3.10 3.11 3.12 3.13

.PHONY: help
help: ## Show this help
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

$(VENV)/.deps: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "maturin>=1.9,<2"
	touch $@

.PHONY: venv
venv: $(VENV)/.deps ## Create .venv with maturin

.PHONY: dev
dev: $(VENV)/.deps ## Build the extension (release) into .venv, with the test/bench/lint tools
	$(VENV)/bin/maturin develop --release --quiet --extras test,bench,lint,demo

.PHONY: servers
servers: ## Make sure redis-server and etcd are installed (installs them as root)
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || missing="$$missing redis-server"; \
	command -v etcd >/dev/null 2>&1 || [ -x /usr/bin/etcd ] || missing="$$missing etcd-server"; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing$$missing from Debian's archive"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SERVER_PACKAGES) >/dev/null; \
		else \
			echo "missing:$$missing. Install them with:"; \
			echo "  sudo apt-get install -y $(SERVER_PACKAGES)"; \
			exit 1; \
		fi; \
	fi

.PHONY: test
test: dev servers ## Build, then run the Rust and Python test suites
	PROPTEST_RNG_SEED=1201 cargo test --workspace --release --quiet
	$(PY) -m pytest

.PHONY: test-versions
test-versions: servers ## Build and run the Python suite on every other supported CPython
	@set -e; own=$$($(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
	for v in $(PYTHON_VERSIONS); do \
		[ "$$v" = "$$own" ] && continue; \
		if command -v pyenv >/dev/null 2>&1; then \
			found=$$(pyenv versions --bare | grep -E "^$$v(\.[0-9]+)?$$" | tail -n 1); \
			py=$$([ -n "$$found" ] && PYENV_VERSION=$$found pyenv which python || true); \
		else \
			py=$$(command -v python$$v || true); \
		fi; \
		if [ -z "$$py" ]; then \
			echo "CPython $$v is not installed; make test-versions needs each of $(PYTHON_VERSIONS)"; \
			exit 1; \
		fi; \
		echo "== CPython $$v ($$py)"; \
		venv=.venv-$$v; \
		[ -x $$venv/bin/python ] || $$py -m venv $$venv; \
		$$venv/bin/python -m pip install --quiet --upgrade pip "maturin>=1.9,<2"; \
		VIRTUAL_ENV=$$(pwd)/$$venv PATH=$$(pwd)/$$venv/bin:$$PATH \
			$$venv/bin/maturin develop --profile ci --quiet --extras test; \
		$$venv/bin/python -m pytest; \
	done

.PHONY: fuzz
fuzz: dev ## Fuzz with fresh seeds: the core's properties (20x the cases), then every API target
	LANGCLUSTER_FUZZ_SCALE=20 cargo test -p langcluster-core --release --quiet --test properties
	for target in $$($(PY) -c "from tests.fuzz.targets import TARGETS; print(*TARGETS)"); do \
		$(PY) -m tests.fuzz.targets $$target 20000 $$RANDOM || exit 1; \
	done

.PHONY: test-all
test-all: test test-versions ## make test, then the Python suite on every other supported CPython

.PHONY: demo
demo: $(VENV)/.deps ## Run the main demo on embedded defaults (no Redis or Consul needed)
	@echo "building langcluster (release) with the demo's extra into $(VENV): a minute the first time"
	@$(PY) -m pip install --quiet --disable-pip-version-check -e '.[demo]'
	$(PY) -m langcluster demo

.PHONY: lint
lint: dev ## cargo fmt, clippy -D warnings, ruff, mypy --strict, stubtest
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --release -- -D warnings
	$(VENV)/bin/ruff check python tests benches examples docs
	$(VENV)/bin/ruff format --check python tests benches examples docs
	$(VENV)/bin/mypy
	$(PY) -m mypy.stubtest langcluster._core --allowlist .stubtest-allowlist

.PHONY: bench
bench: dev servers ## Benchmarks: pytest-benchmark vs floor and peers, then criterion
	$(PY) -m pytest benches/python --benchmark-only \
		--benchmark-columns=min,median,mean,ops --benchmark-sort=name -q
	$(PY) benches/python/report.py
	$(PY) benches/python/cache_report.py
	$(PY) benches/python/layered_report.py
	$(PY) benches/python/breaker_report.py
	$(PY) benches/python/registry_report.py
	$(PY) benches/python/health_report.py
	$(PY) benches/python/metrics_report.py
	$(PY) benches/hit_ratio.py
	$(PY) benches/weighted_hit_ratio.py
	$(PY) benches/prefix_routing.py
	$(PY) benches/transport_overhead.py
	$(PY) benches/shared_prefix.py
	cargo bench -p langcluster-core --bench balancers --bench cache --bench breaker

.PHONY: fmt
fmt: ## Format Rust and Python sources
	cargo fmt --all
	$(VENV)/bin/ruff format python tests benches examples docs
	$(VENV)/bin/ruff check --fix python tests benches examples docs

.PHONY: clean
clean: ## Remove build outputs and the virtualenv
	cargo clean
	rm -rf $(VENV) .venv-* .pytest_cache .mypy_cache .ruff_cache .hypothesis .benchmarks
