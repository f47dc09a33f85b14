# The two commands (README): `make up` runs the system natively, `make test` runs the whole suite.
SHELL := /bin/bash
STATE ?= $(or $(YAHOO_LLM_STATE_DIR),$(CURDIR)/.state)
export YAHOO_LLM_STATE_DIR := $(STATE)
PY := $(STATE)/venv/bin/python

.PHONY: install up down status logs lint lint-docker test test-unit bench chaos prometheus-config experiment

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

# Follows every log of the running stack (YAHOO_LLM_STACK names another).
logs:
	@tail -n 20 -F $(STATE)/$(or $(YAHOO_LLM_STACK),stack)/logs/*.log

# Code health: ruff (rules and format), mypy on the packages, and the import contract (pyproject.toml).
lint: install
	@$(STATE)/venv/bin/ruff check .
	@$(STATE)/venv/bin/ruff format --check .
	@$(STATE)/venv/bin/mypy
	@$(STATE)/venv/bin/lint-imports

# The Docker fleet's static checks (compose config, dclint, hadolint); no engine needed.
lint-docker: install
	@$(PY) -m pytest -q tests/static

# Unit, integration, e2e and the bounded fault-injection run share one test stack; the smoke test then
# runs `make up` itself.
test: install lint
	@CHAOS_SCENARIO=bounded $(PY) -m pytest tests/unit tests/static tests/integration tests/e2e tests/chaos
	@$(PY) -m pytest tests/smoke

test-unit: install
	@$(PY) -m pytest tests/unit

# Micro-benchmarks (scorer, embedded LLM, schemas), then the end-to-end one on the test stack with the
# scripted LLM (benchmarks/e2e.py; E2E_PARTS=scorer,... narrows it): bench-results/e2e-latest.md.
bench: install
	@$(PY) -m benchmarks
	@$(PY) -m benchmarks.e2e $(if $(E2E_PARTS),--parts $(E2E_PARTS))

# Every fault of issue 8 in turn on the test stack (README, "Fault injection"); the table goes to
# bench-results/chaos-latest.md. CHAOS_FAULTS=name,... and CHAOS_QUESTIONS=n narrow or widen it.
chaos: install
	@CHAOS_SCENARIO=$(or $(CHAOS_SCENARIO),full) $(PY) -m pytest -q tests/chaos

# The course's experiments against the running stack (`make up`; YAHOO_LLM_STACK names another): cache
# policies x sizes x TTL and the pipeline's figures, as reports/<UTC time>/report.md and .html
# (README, "Experiments"). MATRIX=experiments/matrices/full.toml for the full matrix.
experiment: install
	@$(PY) -m experiments $(if $(MATRIX),--matrix $(MATRIX))

# Regenerates observability/prometheus.yml (compose's Prometheus) from the stack's scrape targets
# (scripts/platform/observability.py); tests/static checks the committed file is current.
prometheus-config: install
	@$(PY) -m scripts.platform.observability
