# mmcompress — every user-facing command. `make demo` and `make test` work on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(abspath $(VENV))/bin:$(PATH)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export DVC_NO_ANALYTICS := 1
export GX_ANALYTICS_ENABLED := false
export MLFLOW_TRACKING_URI ?= sqlite:///mlruns.db
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test test-fast lint venv venv-peers lock bench bench-data bench-codecs bench-unseen bench-serve airflow serve clean

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

venv-peers:  ## the serving benchmark's peers (DiskANN, ScaNN, LanceDB, usearch) in a venv of their own
	test -x .venv-peers/bin/python || $(PYTHON) -m venv .venv-peers
	.venv-peers/bin/pip install -q -r benchmarks/peers/requirements.txt

demo: $(STAMP)  ## install, run the pipeline on the embedded MovieLens catalog, print the summary
	@test -d .git || git init -q
	$(BIN)/dvc repro
	$(BIN)/python -m pipelines.summary

test: $(STAMP)  ## the whole suite (slow end-to-end tests included), as CI runs it
	$(BIN)/ruff check src pipelines dags validation tests benchmarks
	OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/python -m pytest -q --timeout=900 --durations=25

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check src pipelines dags validation tests benchmarks

lock:  ## regenerate requirements.lock from requirements.in in a clean venv
	rm -rf /tmp/mmcompress-lock && $(PYTHON) -m venv /tmp/mmcompress-lock
	/tmp/mmcompress-lock/bin/pip install -q -r requirements.in
	{ echo "# Generated from requirements.in in a clean Python 3.11 venv (pip freeze). Regenerate with: make lock"; \
	  /tmp/mmcompress-lock/bin/pip freeze | sed 's/^torch==\(.*\)+cpu$$/torch==\1/'; } > requirements.lock

bench: bench-codecs bench-unseen bench-serve

bench-data: $(STAMP)  ## embed the Debian package catalog for the benchmarks into data/cache/bench/ (minutes; then cached)
	$(BIN)/python -m benchmarks.datasets

bench-codecs: $(STAMP)
	$(BIN)/python -m benchmarks.bench_codecs

bench-unseen: $(STAMP)  ## auto and the residual codes on catalog items they were not fitted on
	$(BIN)/python -m benchmarks.bench_unseen

bench-serve: $(STAMP)
	$(BIN)/python -m benchmarks.bench_serve

airflow: $(STAMP)
	bash dags/run_local_airflow.sh

serve: $(STAMP)
	$(BIN)/mmcompress serve --port 8000

clean:
	rm -rf artifacts reports metrics data/catalog data/fused mlruns.db mlartifacts
