# flowcraft-puller — developer entry points. `make dev` runs the system; `make test` tests it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: dev test lint typecheck pytest clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

dev: $(STAMP)
	$(BIN)/flowcraft-puller dev

lint: $(STAMP)
	$(BIN)/ruff check flowcraft_puller tests
	$(BIN)/ruff format --check flowcraft_puller tests

typecheck: $(STAMP)
	$(BIN)/mypy flowcraft_puller

pytest: $(STAMP)
	$(BIN)/pytest -q

test: lint typecheck pytest

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
