# Every target sets up what it needs: a fresh machine with Python 3.11 runs `make demo` / `make test`.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PYTHONUNBUFFERED := 1

.PHONY: demo test lint bench bench-scoring soak venv model clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch 2.13.0 first: pip takes the CPU build from local disk (no multi-GB CUDA download)
	$(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

# make demo KAFKA=1: the same demo through a local Kafka-protocol broker (tansu), stopped afterwards.
demo: $(STAMP)
ifeq ($(KAFKA),1)
	$(BIN)/python -m devtools.kafka_demo demo --users $${DEMO_USERS:-50000} --days $${DEMO_DAYS:-30} \
		--partitions $${DEMO_PARTITIONS:-2} --store $${DEMO_STORE:-chdb://./data/lifecycle.chdb}
else
	$(BIN)/lifecycle run --input simulate --sim-users $${DEMO_USERS:-50000} --sim-days $${DEMO_DAYS:-30} \
		--store $${DEMO_STORE:-chdb://./data/lifecycle.chdb} --progress --summary --rebuild-state
endif

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

lint: $(STAMP)
	$(BIN)/ruff check pipelines models devtools tests bench
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m bench.run
	$(BIN)/python -m bench.core
	$(BIN)/python -m bench.sink
	$(BIN)/python -m bench.kafka
	$(BIN)/python -m bench.scoring --device cpu
	$(BIN)/python -m bench.event_time

# Randomized faults (kill -9, SIGTERM, broker restart) against a live Kafka run for SOAK_SECONDS (default 600),
# checked against an uninterrupted reference run; prints a JSON summary. Not part of `make test`.
soak: $(STAMP)
	SOAK_SECONDS=$${SOAK_SECONDS:-600} $(BIN)/python -m tests.reliability.soak

# Scoring throughput per batch size on CPU, and on CUDA with the host-to-device limit when a GPU is present.
bench-scoring: $(STAMP)
	$(BIN)/python -m bench.scoring

# Retrain the committed default model from simulated history (deterministic).
model: $(STAMP)
	mkdir -p build
	$(BIN)/lifecycle simulate --users 30000 --days 150 --seed 11 --start 2026-06-01 --out build/train.jsonl.gz
	$(BIN)/lifecycle train --events build/train.jsonl.gz --as-of 2026-09-28 --horizon-days 30 \
		--origins 10 --out models/artifacts/default --model-version lsm-default-1
	$(BIN)/lifecycle evaluate --events build/train.jsonl.gz --as-of 2026-09-28 \
		--model models/artifacts/default --out build/report --figures docs/figures

clean:
	rm -rf $(VENV) build data .pytest_cache .mypy_cache .ruff_cache
