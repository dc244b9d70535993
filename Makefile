# Set-up and tasks. `make demo` runs the main job, `make test` passes the tests; both start
# from a fresh machine (Python 3.11, registries only, CPU).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch that pip finds on this kind of machine; GPU users: see README.
TORCH ?= torch==2.13.0

.PHONY: install install-test browser demo test tutorials docs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e .

install-test: install
	$(BIN)/pip install -q -e ".[test,doc]"

# Debian's Chromium for the real-browser test of the app (skipped where it cannot be installed).
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || echo "chromium not installed: the browser test will be skipped"; }

demo: install
	$(BIN)/scadversarial run --data pbmc68k_reduced --out out

test: install-test browser
	$(BIN)/ruff check src tests benchmarks --output-format concise
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/python -m pytest -q

tutorials: install-test
	$(BIN)/python tutorials/execute.py

docs: install-test
	$(BIN)/sphinx-build -W -b html docs docs/_build/html

clean:
	rm -rf $(VENV) out docs/_build .pytest_cache
