# The two commands (README): `make up` runs the system natively, `make test` runs the whole suite.
SHELL := /bin/bash
STATE ?= $(or $(YAHOO_LLM_STATE_DIR),$(CURDIR)/.state)
export YAHOO_LLM_STATE_DIR := $(STATE)
PY := $(STATE)/venv/bin/python

.PHONY: install up down status test test-unit lint-docker bench logs

install:
	@bash scripts/install.sh

up: install
	@$(PY) scripts/stack.py up

# Stops the stack `make up` started (YAHOO_LLM_STACK names another), and the test suite's if left up.
down:
	@if [ -x $(PY) ]; then $(PY) scripts/stack.py down && $(PY) scripts/stack.py --name test-stack down; \
	else echo "[stack] nothing installed, nothing running"; fi

status:
	@$(PY) scripts/stack.py status

# Unit, integration and e2e tests share one test stack; the smoke test then runs `make up` itself.
test: install
	@$(PY) -m pytest tests/unit tests/static tests/integration tests/e2e
	@$(PY) -m pytest tests/smoke

test-unit: install
	@$(PY) -m pytest tests/unit

bench: install
	@$(PY) -m benchmarks
