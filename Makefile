# The command surface. `make train` and `make test` set up what they need on a fresh machine.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The SageMaker SDK's two lines are one package name (`sagemaker`): each has its own venv.
SDK2_BIN := .venv-sdk2/bin
SDK3_BIN := .venv-sdk3/bin
# Where pip takes torch from. Empty: the usual indexes; on Linux, PyPI's torch is the CUDA build,
# with several GB of nvidia-* wheels. For the CPU wheel: TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
TORCH_INDEX_URL ?=
# The DLC's own package versions: the venv gets them where it shares a package with the image.
DLC_CONSTRAINTS := docker/dlc-constraints.txt
STALLION_PARQUET ?= $(realpath ../shared/data/stallion.parquet)
PYTEST_PIN := $(shell grep -oE 'pytest==[0-9.]+' pyproject.toml)
LINTED := code tests local_test bench examples docker
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: help setup train test test-fast lint docs-errors e2e bench-accuracy bench-quality bench bench-ablation bench-container bench-scale clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

$(BIN)/.installed: pyproject.toml docker/requirements.txt $(DLC_CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, from TORCH_INDEX_URL when given (its dependencies then come from PyPI).
	$(BIN)/pip install --quiet torch==2.13.0 -c $(DLC_CONSTRAINTS) \
		$(if $(TORCH_INDEX_URL),--no-deps --index-url $(TORCH_INDEX_URL))
	$(BIN)/pip install --quiet -e ".[local,dev]" -c $(DLC_CONSTRAINTS)
	touch $@

.venv-sdk%/bin/.installed: examples/requirements-sdk%.txt pyproject.toml
	$(PYTHON) -m venv .venv-sdk$*
	.venv-sdk$*/bin/pip install --quiet -r $< $(PYTEST_PIN)
	touch $@

setup: $(BIN)/.installed ## create .venv with the pinned dependencies (the DLC's versions)

train: setup ## train on the built-in synthetic data through the SageMaker toolkit
	$(BIN)/python local_test/prepare_data.py
	local_test/train_local.sh

test: setup $(SDK2_BIN)/.installed $(SDK3_BIN)/.installed ## lint and run the test suite
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	STALLION_PARQUET=$(STALLION_PARQUET) $(BIN)/python -m pytest
	# The launch examples, each with its SDK (without the job's fixtures: no torch there).
	$(SDK2_BIN)/python -m pytest --noconftest -p no:cacheprovider tests/test_launch_example_v2.py
	$(SDK3_BIN)/python -m pytest --noconftest -p no:cacheprovider tests/test_launch_example_v3.py

docs-errors: setup ## rewrite docs/errors.md (each bad input and its message) from the tests
	TFT_ERRORS_DOC=write $(BIN)/python -m pytest -q tests/test_data_validation.py tests/test_predict_errors.py \
		tests/test_faults.py tests/test_memory.py tests/test_preflight.py tests/test_resume.py tests/test_shares.py

test-fast: setup ## lint and the tests that start no process and train a few steps at most
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	STALLION_PARQUET=$(STALLION_PARQUET) $(BIN)/python -m pytest -m "not slow"

e2e: setup ## the container end to end: engine, images, compose, registry (root, Debian)
	bash local_test/e2e.sh

bench-accuracy: setup ## Stallion validation MAE over 5 seeds -> bench/results/stallion_accuracy.json
	STALLION_PARQUET=$(STALLION_PARQUET) $(BIN)/python bench/accuracy.py

bench-quality: setup ## the shipped forecast, the TFT alone and the baselines on 7 public panels and Stallion, 3 seeds -> bench/results/quality.json
	$(BIN)/pip install --quiet -e ".[bench]" -c $(DLC_CONSTRAINTS)
	# Two jobs at a time, one thread each: on 2 cores, each job's time is that of one core.
	STALLION_PARQUET=$(STALLION_PARQUET) $(BIN)/python bench/quality.py --parallel 2

bench: setup ## throughput, time to MAE, data scaling, ablation -> bench/results/
	STALLION_PARQUET=$(STALLION_PARQUET) $(BIN)/python bench/throughput.py
	STALLION_PARQUET=$(STALLION_PARQUET) $(BIN)/python bench/ablation.py

bench-ablation: setup ## what each speed-up lever buys -> bench/results/ablation.{json,md}
	STALLION_PARQUET=$(STALLION_PARQUET) $(BIN)/python bench/ablation.py

bench-scale: setup ## the job on 1, 5, 20 and 50 million rows vs pytorch-forecasting's dataset -> bench/results/scale.json
	OMP_NUM_THREADS=1 nice -n 10 $(BIN)/python bench/scale.py $(SCALE_ARGS)

bench-container: setup ## host vs containers throughput (after make e2e) -> bench/results/container.json
	STALLION_PARQUET=$(STALLION_PARQUET) $(BIN)/python bench/container.py

clean: ## remove local runs (not the venvs)
	rm -rf runs
