# Every target builds .venv itself; a fresh clone needs nothing but python3 (3.11+).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# The console's browser tests drive Debian's chromium (Playwright cannot download a browser here).
CHROMIUM := /usr/bin/chromium
# `make run PORT=8010 HOST=0.0.0.0`. Plain `=`: only the command line overrides them, not a
# PORT or HOST that the shell or a platform happens to export.
HOST = 127.0.0.1
PORT = 8000

.PHONY: install run test lint typecheck bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)  ## create or update .venv; the console script lands at .venv/bin/fanout

run: $(STAMP)  ## the ingress and every pool, on embedded defaults when nothing is configured
	$(BIN)/fanout run --host $(HOST) --port $(PORT)

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy bus ingress workers fanout examples/shop/shop

$(CHROMIUM):
	apt-get install -y -qq chromium || { apt-get update -qq && apt-get install -y -qq chromium; }

# Most tests wait on subprocesses, sockets and timers, so two pytest processes take about half the time
# on 2 cores (318 s -> 156 to 167 s). `make test TEST_PROCESSES=0` runs them in this one process.
TEST_PROCESSES = 2

test: lint typecheck $(CHROMIUM)  ## ruff, mypy, then pytest (real Redis at 127.0.0.1:6379 for integration tests)
	$(BIN)/pytest -n $(TEST_PROCESSES)

bench: $(STAMP)  ## side-by-side benchmarks; not part of `make test`
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
