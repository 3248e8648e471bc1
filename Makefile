# Thin, documented entry points. `make help` lists them. PYTHON may name a virtualenv's interpreter.
PYTHON ?= python3
DATA ?= ../shared/data/routerbench
OUT ?= out

.DEFAULT_GOAL := help
.PHONY: help install lint typecheck test test-all protos train-default reproduce

help:  ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-15s %s\n", $$1, $$2}'

install:  ## Install the package with its dev tools (editable)
	$(PYTHON) -m pip install -e '.[dev]'

lint:  ## ruff lint + format check, mypy types
	$(PYTHON) -m ruff check barp_sidecar trainer tests bench
	$(PYTHON) -m ruff format --check barp_sidecar trainer tests bench
	$(PYTHON) -m mypy barp_sidecar trainer

test:  ## The test suite (minutes; real-data/encoder tests skip when their inputs are absent)
	$(PYTHON) -m pytest

test-all:  ## The suite including the slow marker
	$(PYTHON) -m pytest -m ''

protos:  ## Regenerate the checked-in gRPC stubs from protos/
	$(PYTHON) -m barp_sidecar.rpc.codegen
