# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
# bash: the install step reads pip's exit status through a pipe (PIPESTATUS).
SHELL  := /bin/bash
VENV   := .venv
BIN    := $(VENV)/bin
SUM    := $(shell cat pyproject.toml | cksum | cut -d' ' -f1)
# What is installed, for this pyproject.toml: the app alone (demo), or with the test tools.
APP_STAMP := $(VENV)/.installed-app-$(SUM)
STAMP     := $(VENV)/.installed-dev-$(SUM)
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PORT   ?= 8400

.PHONY: demo test test-fast bench load lint chromium clean

$(BIN)/python:
	@echo "make: creating the virtual environment $(VENV) with $$($(PYTHON) --version)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The app and what it runs on; said before it starts, timed when it ends (first run only).
$(APP_STAMP): pyproject.toml | $(BIN)/python
	@echo "make: installing smartapp into $(VENV) with what it runs on (about 50 packages:"
	@echo "      Flask, waitress, SQLAlchemy, Alembic, Authlib, fhir.resources, carebundle, ...)."
	@echo "      Usually 1-3 minutes, depending on the network; later runs reuse $(VENV)."
	@start=$$(date +%s); $(BIN)/python -m pip install --progress-bar off -e . \
	  | grep -E '^(Collecting|Successfully installed)' | cut -c1-100; \
	  test $${PIPESTATUS[0]} -eq 0 && echo "make: installed in $$(( $$(date +%s) - start )) s"
	rm -f $(VENV)/.installed-app-*
	touch $@

# The test and lint tools on top (pytest, playwright, psycopg, ruff, mypy).
$(STAMP): pyproject.toml | $(BIN)/python
	@echo "make: installing smartapp with its test and lint tools into $(VENV) (1-4 minutes, first run only)"
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-dev-* $(VENV)/.installed-app-*
	touch $@ $(APP_STAMP)

## demo: start the embedded sandbox EHR with the app in its sidebar; prints the URL to open.
demo: $(APP_STAMP)
	@[ -d instance/sandbox ] || echo "make: first start: generating the sandbox's 24 synthetic patients (about 10 s)"
	$(BIN)/smartapp sandbox --port $(PORT)

## chromium: the real browser the browser tests drive (Debian's package; no downloads).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the browser tests"; \
	  $(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

## test: the whole suite: unit, integration over loopback, PostgreSQL (when configured), Chromium.
test: $(STAMP) chromium
	$(BIN)/python -m pytest

## test-fast: unit tests only.
test-fast: $(STAMP)
	$(BIN)/python -m pytest tests/unit -q

## bench: the chart-loading benchmark; writes bench/results.json.
bench: $(STAMP)
	$(BIN)/python -m smartapp.bench --latency-ms 50 --out bench/results.json

## load: simulated clinicians (1, 8, 32, 64) against `smartapp serve` and the sandbox EHR on
## loopback, SQLite on 1 process and PostgreSQL on 2 (SMARTAPP_LOAD_DATABASE_URL), plus a
## 35 s LLM, each clinician reading for 4 s on average between clicks; then 32 clinicians
## with no think time (saturation); writes bench/load.json (about 12 minutes on 2 cores).
load: $(STAMP)
	$(BIN)/python -m smartapp.load --out bench/load.json

## lint: ruff and mypy (strict), as CI runs them.
lint: $(STAMP)
	$(BIN)/ruff check smartapp tests
	$(BIN)/mypy smartapp

clean:
	rm -rf $(VENV) instance .pytest_cache
