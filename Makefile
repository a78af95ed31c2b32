# The two commands a new user needs: `make demo` and `make test`.
# Both set up everything on a fresh machine and are quick when already set up.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
ANVIL_DIR := node_modules/@foundry-rs/anvil-linux-amd64/bin
# ape-foundry finds anvil on PATH.
export PATH := $(CURDIR)/$(ANVIL_DIR):$(CURDIR)/$(BIN):$(PATH)
# ape's pydantic-settings warning about ape-vyper's config is harmless noise.
export PYTHONWARNINGS := ignore::UserWarning:pydantic_settings.main,ignore::UserWarning:pydantic_settings.sources.utils

NETWORK ?= ethereum:local:foundry

.PHONY: setup setup-parts postgres chromium dashboard demo test lint bench clean

# Two independent chains, run side by side on two jobs: the venv then the contracts'
# compilation, and the npm packages then the dashboard's build.
SETUP_PARTS := $(VENV)/.installed .build/.compiled node_modules/.installed dashboard/dist/index.html
setup:
	@$(MAKE) --no-print-directory -j2 --output-sync=target setup-parts
setup-parts: $(SETUP_PARTS)
	@:

# The ledger's tests run against a real PostgreSQL server (started per test session
# from these binaries); install Debian's package when the binaries are missing.
PG_INITDB := $(firstword $(wildcard /usr/lib/postgresql/*/bin/initdb))
postgres:
ifeq ($(PG_INITDB),)
	@echo "installing PostgreSQL server binaries (Debian package postgresql)"
	$(if $(filter 0,$(shell id -u)),,sudo) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y -qq postgresql >/dev/null
endif

# The lock is installed by uv (pinned in the lock itself, bootstrapped with pip): the same
# exact versions as `pip install -r`, several times faster, from uv's cache when warm.
# --compile-bytecode: the .pyc files now, as pip writes them (on both cores); without them
# every process would compile its imports again where PYTHONDONTWRITEBYTECODE is set.
$(VENV)/.installed: requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check $$(grep -x 'uv==[0-9.]*' requirements.lock)
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -r requirements.lock
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e .
	touch $@

# The contracts, compiled once here into ape's .build/ (the tests and `promptex up` reuse it;
# a fresh clone's first `promptex up` would otherwise spend ~40 s compiling). --force: this
# runs only when a contract changed, and ape's incremental compile can keep a stale ABI then
# (seen after the vault's re-pack: deploy refused "number of the given arguments").
.build/.compiled: $(VENV)/.installed ape-config.yaml $(shell find contracts -name '*.vy' -o -name '*.vyi')
	$(BIN)/ape compile --force -v WARNING
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# The web dashboard's front end (its own pinned packages), built into dashboard/dist.
# `npm install --no-save` installs exactly the lock's versions without rewriting it. Not
# `npm ci`: the registry reachable here lacks rollup's packages for other platforms, so the
# lock cannot list them, and `npm ci` refuses a lock without them.
dashboard/node_modules/.installed: dashboard/package.json dashboard/package-lock.json
	cd dashboard && npm install --no-save --no-audit --no-fund --loglevel=error
	touch $@

dashboard/dist/index.html: dashboard/node_modules/.installed dashboard/index.html dashboard/vite.config.ts \
		dashboard/tsconfig.json $(shell find dashboard/src -type f)
	cd dashboard && npm run build

# The dashboard's browser tests drive Debian's chromium (a browser download is not possible here).
chromium:
ifeq ($(wildcard /usr/bin/chromium),)
	@echo "installing Debian's chromium for the dashboard's browser tests"
	$(if $(filter 0,$(shell id -u)),,sudo) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y -qq chromium >/dev/null
endif

## The local demo: starts anvil (or attaches to one on :8545), deploys, runs the flow.
demo: setup
	$(BIN)/ape run demo --network $(NETWORK) -v WARNING

## The whole test suite.
test: setup postgres chromium
	$(BIN)/ape test tests -n 2 --dist worksteal -v WARNING --durations=40

## The web dashboard alone (http://127.0.0.1:8090; `promptex up` starts it with the market).
dashboard: setup
	$(BIN)/promptex dashboard

lint: setup
	$(BIN)/ruff check src scripts tests bench
	$(BIN)/ruff format --check src scripts tests bench
	$(BIN)/mypy src
	$(BIN)/lint-imports --no-cache
	cd dashboard && npx tsc --noEmit

## Gas per operation, as a table (`make bench ARGS=--json` for JSON).
bench: setup
	$(BIN)/python bench/gas.py $(ARGS)

clean:
	rm -rf $(VENV) node_modules dashboard/node_modules dashboard/dist .build deployments/local.json deployments/abi
