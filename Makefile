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

down:
	@if [ -x $(PY) ]; then $(PY) scripts/stack.py down; $(PY) scripts/stack.py --name test-stack down; else echo "[stack] not installed"; fi

status:
	@$(PY) scripts/stack.py status

test: install
	@$(PY) -m pytest tests

test-unit: install
	@$(PY) -m pytest tests/unit

bench: install
	@$(PY) -m benchmarks
