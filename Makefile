# The command surface. `make train` and `make test` set up what they need on a fresh machine.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STALLION_PARQUET ?= $(realpath ../shared/data/stallion.parquet)
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: help setup train test test-fast lint e2e bench-accuracy bench bench-ablation clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

$(BIN)/.installed: pyproject.toml docker/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build of torch first: PyPI's default torch is the multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[local,dev,launch]"
	touch $@

setup: $(BIN)/.installed ## create .venv with the pinned dependencies (CPU torch)

train: setup ## train on the built-in synthetic data through the SageMaker toolkit
	$(BIN)/python local_test/prepare_data.py
	local_test/train_local.sh

test: setup ## lint and run the test suite
	$(BIN)/ruff check code tests local_test bench examples
	$(BIN)/ruff format --check code tests local_test bench examples
	STALLION_PARQUET=$(STALLION_PARQUET) $(BIN)/python -m pytest

test-fast: setup ## lint and the tests that start no process and train a few steps at most
	$(BIN)/ruff check code tests local_test bench examples
	$(BIN)/ruff format --check code tests local_test bench examples
	STALLION_PARQUET=$(STALLION_PARQUET) $(BIN)/python -m pytest -m "not slow"

e2e: setup ## the container end to end: engine, images, compose, registry (root, Debian)
	bash local_test/e2e.sh

bench-accuracy: setup ## Stallion validation MAE over 5 seeds -> bench/results/stallion_accuracy.json
	STALLION_PARQUET=$(STALLION_PARQUET) $(BIN)/python bench/accuracy.py

bench: setup ## throughput, time to MAE, data scaling, ablation -> bench/results/
	STALLION_PARQUET=$(STALLION_PARQUET) $(BIN)/python bench/throughput.py
	STALLION_PARQUET=$(STALLION_PARQUET) $(BIN)/python bench/ablation.py

bench-ablation: setup ## what each speed-up lever buys -> bench/results/ablation.{json,md}
	STALLION_PARQUET=$(STALLION_PARQUET) $(BIN)/python bench/ablation.py

clean: ## remove local runs (not the venv)
	rm -rf runs
