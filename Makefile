# barstream — every target installs what it needs by itself (a .venv from PyPI).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: run demo test test-all check fmt lint type bench clean help

help:            ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check --upgrade pip setuptools
	@$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $@

venv: $(STAMP)   ## create/refresh .venv

run: $(STAMP)    ## offline demo under supervisord (LIVE=1 real feed; PORT_OFFSET=N moves every port)
	@$(PY) -m barstream demo $(if $(LIVE),--live,) $(if $(DURATION),--duration $(DURATION),) \
		$(if $(PORT_OFFSET),--port-offset $(PORT_OFFSET),)

# Locally `make test` skips the slow suites (chaos with many kills, soak, the full demo);
# under CI (CI=true) it runs them too: ~10 min in all on 2 cores, well inside CI's limit.
TEST_MARK ?= $(if $(CI),,not slow)

test: $(STAMP)   ## the test suite (slow suites too when CI=true)
	@bash scripts/ensure-debs.sh
	@bash scripts/pytest-nonempty.sh $(PY) -m "$(TEST_MARK)" $(PYTEST_ARGS)

test-all: $(STAMP) ## every test, slow ones included
	@bash scripts/ensure-debs.sh
	@bash scripts/pytest-nonempty.sh $(PY) $(PYTEST_ARGS)

fmt: $(STAMP)
	@$(PY) -m ruff format .
	@$(PY) -m ruff check --fix .

lint: $(STAMP)
	@$(PY) -m ruff format --check .
	@$(PY) -m ruff check .

type: $(STAMP)
	@$(PY) -m mypy

check: lint type test  ## ruff, mypy --strict, pytest

bench: $(STAMP)  ## every benchmark, one table
	@$(PY) -m bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
