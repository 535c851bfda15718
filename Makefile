# flowcraft-puller — developer entry points.
#   make dev    the whole system on this machine (emulator + daemon + one example run)
#   make test   everything CI runs: lint, types, Python tests, the Worker's tests under workerd
#   make bench  the benchmark (bench.mk); make deploy-check, container-smoke (deploy.mk)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODE_STAMP := worker/node_modules/.installed

.PHONY: dev test lint typecheck pytest worker-test worker-check deps clean

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

$(NODE_STAMP): worker/package.json worker/package-lock.json
	npm ci --prefix worker --no-audit --no-fund
	touch $(NODE_STAMP)

deps: $(STAMP) $(NODE_STAMP)

dev: $(STAMP)
	$(BIN)/flowcraft-puller dev --state var/dev-state.sqlite

lint: $(STAMP) $(NODE_STAMP)
	$(BIN)/ruff check flowcraft_puller tests examples bench
	$(BIN)/ruff format --check flowcraft_puller tests examples bench
	npm run --prefix worker --silent lint

typecheck: $(STAMP) $(NODE_STAMP)
	$(BIN)/mypy flowcraft_puller bench
	npm run --prefix worker --silent typecheck

pytest: $(STAMP) $(NODE_STAMP)
	$(BIN)/pytest -q

worker-test: $(NODE_STAMP)
	npm test --prefix worker

test: lint typecheck pytest worker-test

clean:
	rm -rf $(VENV) worker/node_modules .pytest_cache .mypy_cache .ruff_cache var

include deploy.mk
include bench.mk
