# Astra reproduction framework. `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=
# make test: pytest-xdist workers (one torch thread each); the suite takes about 12 CPU-minutes in all (745 s measured)
TEST_WORKERS ?= 2

.PHONY: help install test test-slow test-gpu lint run tokenizer bench paper paper-real clean

help:  ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-12s %s\n", $$1, $$2}'

install:  ## create .venv and install the package with its dev extras (torch pinned by constraints.txt)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -c constraints.txt -e ".[dev]"
	$(BIN)/python -m pip install -c constraints.txt --no-deps -r requirements-nodeps.txt

test:  ## run the fast test suite (CPU, offline, temp dirs; TEST_WORKERS processes, one module each)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test-slow:  ## run the slow tests too
	$(BIN)/python -m pytest -q -m "not gpu"

test-gpu:  ## run the GPU tests (needs CUDA)
	$(BIN)/python -m pytest -q -m gpu

lint:  ## ruff check
	$(BIN)/ruff check src tests run.py experiments

run:  ## one run: make run ARGS="method=astra task=gsm8k"
	$(BIN)/python run.py $(ARGS)

tokenizer:  ## rebuild the tiny model's BPE tokenizer from the shipped sample
	$(BIN)/python -m astra.run.build_tokenizer

bench:  ## run the benchmarks (tables printed, JSON under experiments/bench/results/; ~25 min on 2 CPU cores)
	$(BIN)/python experiments/bench/step_overhead.py
	$(BIN)/python experiments/bench/telemetry_cost.py
	$(BIN)/python experiments/bench/init_cost.py
	$(BIN)/python experiments/bench/init_scaling.py
	$(BIN)/python experiments/bench/eval_cost.py

paper:  ## tables and figures from experiments/results into experiments/paper (ARGS="--filter experiment=nlg_math")
	$(BIN)/python -m astra.report $(ARGS)

PUBLISHED_COMPARISONS ?= compare_qnli compare_qnli_worst_seed compare_qnli_head_rate compare_qnli_head_rate_all compare_commonsense

paper-real:  ## the published comparisons' reports (experiments/paper/compare/) and the superseded first comparison
	for name in $(PUBLISHED_COMPARISONS); do $(BIN)/python -m astra.compare experiment=$$name --phase report || exit 1; done
	$(BIN)/python -m astra.report --results experiments/results/real/superseded/first_comparison \
		--out experiments/paper/superseded/first_comparison

clean:  ## remove logs and caches (never experiments/results)
	rm -rf logs .pytest_cache
