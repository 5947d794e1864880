# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PORT   ?= 8400

.PHONY: demo test test-fast bench lint chromium clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

## demo: start the embedded sandbox EHR with the app in its sidebar; prints the URL to open.
demo: $(STAMP)
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

## lint: ruff and mypy (strict), as CI runs them.
lint: $(STAMP)
	$(BIN)/ruff check smartapp tests
	$(BIN)/mypy smartapp

clean:
	rm -rf $(VENV) instance .pytest_cache
