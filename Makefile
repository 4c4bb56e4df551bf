# cdcpipe — two commands on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
.ONESHELL:
.SHELLFLAGS := -eu -o pipefail -c

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STACK  := deploy/local/stack
STAMP  := $(VENV)/.installed

.PHONY: run test install compiled tools stack-up stack-down stack-status lint unit integration clean

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "cdcpipe needs Python >= 3.11, found " + sys.version'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(STAMP) compiled

# Capture's hot modules compiled with mypyc into .build/compiled (cdcpipe/_compiled.py): rebuilt when a source
# changed; used only while it matches the sources, so an edit falls back to pure Python, never to a stale build.
compiled: $(STAMP)
	$(BIN)/python -m cdcpipe.build_compiled --check >/dev/null || $(BIN)/python -m cdcpipe.build_compiled \
		|| echo "make: the mypyc build failed; cdcpipe runs its pure-Python modules (slower capture)" >&2

# System tools the test suite needs besides the stack's own (the stack installs Java, Maven and PostgreSQL).
tools:
	if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null 2>&1; then
		if [ "$$(id -u)" = 0 ]; then
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose >/dev/null
		else
			echo "make: install the Debian package docker-compose (or the docker compose plugin) to validate compose.yaml" >&2; exit 1
		fi
	fi

# TLS beside plaintext on all three stores (the tests use both), and Vault when the dev extra's bao is installed.
stack-up:
	$(STACK) up --tls

stack-down:
	$(STACK) down

stack-status:
	$(STACK) status

lint: install
	$(BIN)/ruff check cdcpipe tests bench
	$(BIN)/mypy

unit: install
	$(BIN)/pytest tests/unit -q

integration: install tools stack-up
	eval "$$($(STACK) env)"
	$(BIN)/pytest tests/deploy tests/integration -q

# The whole suite: lint, unit tests, and integration tests against the real local stack.
test: install tools stack-up lint
	CDCPIPE_COMPILED=off $(BIN)/pytest tests/unit -q -p no:cacheprovider  # the pure-Python modules too
	eval "$$($(STACK) env)"
	$(BIN)/pytest -q -p no:cacheprovider --durations=30

# Bring up the stack, then the live demo: capture and apply as background processes (logs under .stack/run/),
# a demo workload with a live view, and a table-by-table comparison of both databases (exit 1 if they differ).
run: install stack-up
	eval "$$($(STACK) env)"
	$(STACK) status
	echo
	$(BIN)/cdcpipe check
	echo
	$(BIN)/cdcpipe demo $(DEMO_ARGS)
	echo
	echo "The stack is still up. Configure a shell for cdcpipe with:  eval \"\$$($(STACK) env)\""
	echo "Stop it with: $(STACK) down   (add --purge to delete its data)"

clean:
	$(STACK) down --purge || true
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
