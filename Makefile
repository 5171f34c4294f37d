# barstream — every target installs what it needs by itself (a .venv from PyPI).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: run demo test test-all check fmt lint type bench clean help venv lock web

help:            ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

# Every package in .venv, pip and setuptools included, is the version constraints.txt pins
# (pyproject.toml gives the ranges; `make lock` resolves them anew into constraints.txt).
CONSTRAINTS := constraints.txt
PIP_Q := -m pip install -q --disable-pip-version-check

$(STAMP): pyproject.toml $(CONSTRAINTS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) $(PIP_Q) -c $(CONSTRAINTS) --upgrade pip setuptools
	@$(PY) $(PIP_Q) -c $(CONSTRAINTS) -e '.[dev]'
	@touch $@

venv: $(STAMP)   ## create/refresh .venv (the versions constraints.txt pins)

# The chart page's charting library, from the npm registry at the versions
# web/package-lock.json pins (into web/node_modules, which `barstream serve` serves). Without
# npm the Python parts still build; the page then says to run `make web`.
WEB_STAMP := web/node_modules/.installed

$(WEB_STAMP): web/package.json web/package-lock.json
	@if command -v npm >/dev/null; then \
	  npm ci --prefix web --no-audit --no-fund --loglevel=error && touch $@; \
	else echo "note: npm is not installed: no chart page (apt-get install npm, then make web)" >&2; fi

web: $(WEB_STAMP) ## the chart page's npm packages (web/node_modules, as package-lock.json pins)

# A throwaway venv gets the newest versions pyproject.toml allows (runtime + dev extras);
# its `pip freeze` becomes constraints.txt. Then `make venv` installs them and `make check`
# says whether they work.
lock:            ## re-resolve every dependency into constraints.txt (then: make check, commit)
	@set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(PYTHON) -m venv "$$tmp/venv"; \
	"$$tmp/venv/bin/python" $(PIP_Q) --upgrade pip setuptools; \
	"$$tmp/venv/bin/python" $(PIP_Q) '.[dev]'; \
	{ echo "# Every package of barstream's runtime and dev dependencies (pyproject.toml), pinned."; \
	  echo "# Resolved by \`make lock\` with $$("$$tmp/venv/bin/python" -V) on $$(uname -sm); do not edit by hand."; \
	  echo "# Used by \`make venv\`: pip install -c constraints.txt -e '.[dev]'."; \
	  "$$tmp/venv/bin/python" -m pip freeze --all --exclude barstream; } > "$$tmp/$(CONSTRAINTS)"; \
	mv "$$tmp/$(CONSTRAINTS)" $(CONSTRAINTS); \
	echo "$(CONSTRAINTS): $$(grep -c '==' $(CONSTRAINTS)) packages pinned"

run: $(STAMP) web ## offline demo under supervisord (LIVE=1 real feed; PORT_OFFSET=N moves every port)
	@$(PY) -m barstream demo $(if $(LIVE),--live,) $(if $(DURATION),--duration $(DURATION),) \
		$(if $(PORT_OFFSET),--port-offset $(PORT_OFFSET),)

# Locally `make test` skips the slow suites (chaos with many kills, soak, the full demo);
# under CI (CI=true) it runs them too: ~10 min in all on 2 cores, well inside CI's limit.
TEST_MARK ?= $(if $(CI),,not slow)

test: $(STAMP) web ## the test suite (slow suites too when CI=true)
	@bash scripts/ensure-debs.sh
	@bash scripts/pytest-nonempty.sh $(PY) -m "$(TEST_MARK)" $(PYTEST_ARGS)

test-all: $(STAMP) web ## every test, slow ones included
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
