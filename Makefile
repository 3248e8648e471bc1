# Thin, documented entry points. `make help` lists them. PYTHON may name a virtualenv's interpreter.
PYTHON ?= python3
DATA ?= ../shared/data/routerbench
OUT ?= out
# The infinity-emb peer's own virtual environment (bench/encoder_peer.py) and the CPU torch it installs: a
# local wheel, or e.g. PEER_TORCH='torch==2.13.0+cpu --extra-index-url https://download.pytorch.org/whl/cpu'
PEER_VENV ?= .cache/peer-venv
PEER_TORCH ?= /opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl

.DEFAULT_GOAL := help
.PHONY: help install lint test test-all protos train-default builtin-calibration reproduce demo fake-provider \
	bench-route bench-forward bench-learning bench-startup bench-http bench-encoders bench-peer peer-venv gpu-check \
	quickstart \
	helm-check helm-docs settings-docs node-deps

help:  ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-15s %s\n", $$1, $$2}'

install:  ## Install the package with its dev tools (editable), and the Node test client's package if npm is here
	$(PYTHON) -m pip install -e '.[dev]'
	@if command -v npm >/dev/null; then $(MAKE) --no-print-directory node-deps; \
	else echo "npm not found: the Node client test (tests/http/test_openai_node.py) will skip"; fi

node-deps:  ## The openai npm package for the Node client tests (tests/http/node, from its lock file)
	npm ci --prefix tests/http/node --no-audit --no-fund

lint:  ## ruff lint + format check, mypy types
	$(PYTHON) -m ruff check barp_sidecar trainer tests bench helm
	$(PYTHON) -m ruff format --check barp_sidecar trainer tests bench helm
	$(PYTHON) -m mypy barp_sidecar trainer

test:  ## The test suite (minutes; real-data/encoder tests skip when their inputs are absent)
	$(PYTHON) -m pytest

test-all:  ## The suite including the slow marker
	$(PYTHON) -m pytest -m ''

protos:  ## Regenerate the checked-in gRPC stubs from protos/
	$(PYTHON) -m barp_sidecar.rpc.codegen

train-default:  ## Retrain the shipped default policy (barp_sidecar/policies/routerbench-11) on $(DATA)
	$(PYTHON) -m trainer.cli offline --data $(DATA) --out barp_sidecar/policies/routerbench-11 --seed 0 --force
	$(PYTHON) -m trainer.cli calibrate barp_sidecar/policies/routerbench-11

builtin-calibration:  ## Regenerate the shipped policy's calibration set from the built-in prompts (deterministic)
	$(PYTHON) -m trainer.cli calibrate barp_sidecar/policies/routerbench-11

reproduce:  ## BaRP vs every baseline, in- and out-of-distribution: $(OUT)/reproduce/report.md (~15 min cold)
	$(PYTHON) -m trainer.cli reproduce --data $(DATA) --out $(OUT)/reproduce

demo:  ## Online learning demo: trainer + sidecar + RouterBench traffic from a cold policy (a few minutes)
	$(PYTHON) -m trainer.demo --data $(DATA) --out demo-out

fake-provider:  ## Fake OpenAI-compatible/Anthropic provider on 127.0.0.1:8089 (docs/providers.md)
	$(PYTHON) -m barp_sidecar.providers.fake_server --port 8089

bench-route:  ## Route throughput/latency: in-process ceiling vs sidecar vs unbatched (docs/benchmarks.md)
	OMP_WAIT_POLICY=PASSIVE $(PYTHON) -m bench.route_load --prompt-tokens 16 64 --concurrency 64 \
		--duration-s 6 --rounds 4 --json $(OUT)/bench/route_load.json

bench-forward:  ## Forwarding overhead: Complete vs Route vs the provider directly (docs/benchmarks.md)
	$(PYTHON) -m bench.forward_load --concurrency 1,100 --requests 2400 --rounds 3 --json $(OUT)/bench/forward-closed.json
	$(PYTHON) -m bench.forward_load --rate-rps 140 --tokens 8 --tokens-per-s 10 --requests 2100 --rounds 3 \
		--json $(OUT)/bench/forward-streams.json

bench-startup:  ## Start-up times (--help, config error, serve until SERVING, decide) against the targets
	$(PYTHON) -m bench.startup --repeats 5 --json $(OUT)/bench/startup.json

bench-http:  ## OpenAI-compatible HTTP API vs gRPC Complete, same sidecar and concurrency (docs/benchmarks.md)
	$(PYTHON) -m bench.http_load --concurrency 1,100 --requests 3000 --rounds 5 --json $(OUT)/bench/http-closed.json
	$(PYTHON) -m bench.http_load --rate-rps 100 --tokens 8 --tokens-per-s 10 --requests 1500 --rounds 3 \
		--json $(OUT)/bench/http-streams.json

bench-learning:  ## Trainer ingestion (durable acks) and Route p99 during hot swaps
	$(PYTHON) -m bench.trainer_ingest --json $(OUT)/bench/trainer_ingest.json

bench-encoders:  ## Encoder backends: decision agreement (../shared/data), in-process speed, ONNX Runtime threads
	$(PYTHON) -m bench.encoder_backends agreement --json $(OUT)/bench/encoder_agreement.json
	OMP_WAIT_POLICY=PASSIVE $(PYTHON) -m bench.encoder_backends speed --threads 2 --json $(OUT)/bench/encoder_speed.json
	$(PYTHON) -m bench.encoder_backends threads --json $(OUT)/bench/encoder_threads.json

peer-venv:  ## The infinity-emb peer in its own venv $(PEER_VENV) (CPU torch from $(PEER_TORCH); docs/benchmarks.md)
	$(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/pip install $(PEER_TORCH) -r bench/peer-requirements.txt

bench-peer:  ## Ceiling vs sidecar Route vs the infinity-emb peer at 16/64/256 tokens, 64 clients (make peer-venv)
	$(PYTHON) -m bench.encoder_peer --peer-venv $(PEER_VENV) --prompt-tokens 16 64 256 --concurrency 64 --rounds 3 \
		--json $(OUT)/bench/encoder_peer.json

gpu-check:  ## On a CUDA machine: the CUDA tests and the route bench with CUDA settings, one table (< 8 min)
	PYTHON=$(PYTHON) OUT_DIR=$(OUT)/gpu_check bash bench/gpu_check.sh

helm-check:  ## Lint Dockerfile + Helm chart, render every ci/ values file, validate against Kubernetes schemas
	PYTHON=$(PYTHON) bash .ci/install-helm.sh .tools/bin
	PYTHON=$(PYTHON) bash .ci/helm-check.sh

settings-docs:  ## Regenerate docs/trainer-configuration.md from trainer/service/settings.py (a test checks it)
	$(PYTHON) -m trainer.service.settings_reference

helm-docs:  ## Regenerate helm/barp-sidecar/values.schema.json and its README values table (after settings change)
	$(PYTHON) helm/generate_docs.py
