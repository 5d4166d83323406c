# One entry point per thing a person does with the project. See README.md.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
HOST := 127.0.0.1
PREFECT_PORT ?= 4200
MLFLOW_PORT ?= 5000

# Stages run with the project's environment first on PATH (dvc.yaml calls plain `python`), and
# without the phone-home of DVC and Prefect (these machines have no internet; it would only log errors).
export PATH := $(CURDIR)/$(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: setup run test test-fast bench ui flow serve

## setup: create .venv, install the project with its pinned dependencies, initialise DVC (idempotent)
setup: $(VENV)/.installed
	@test -d .dvc || $(BIN)/dvc init -q
	@echo "setup done: activate with 'source $(BIN)/activate'"

$(VENV)/.installed: pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24"
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	@touch $@

## run: the whole pipeline on the default params (skips what has not changed); evaluate_icl again
## when the SFT or PPO model it scores changed (DVC tracks only its base-model input)
run: setup
	$(BIN)/dvc repro
	@if $(BIN)/python -m stages.evaluate_icl --stale; then $(BIN)/dvc repro -f -s evaluate_icl; fi

## test: the test suite (unit, stage, end-to-end)
test: setup
	$(BIN)/python -m pytest -q

## test-fast: unit tests only (skips the end-to-end DVC/Prefect tests)
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

## bench: benchmarks that print figures (encode, train step, sampling, PPO memory; PPO against TRL with the bench-trl extra)
bench: setup
	$(BIN)/python benchmarks/encode.py
	$(BIN)/python benchmarks/train_step.py
	$(BIN)/python benchmarks/sample.py
	$(BIN)/python benchmarks/ppo_memory.py
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[bench-trl]'
	$(BIN)/python benchmarks/ppo_vs_trl.py

## flow: run the pipeline once as a Prefect flow (a local server is started on demand)
flow: setup
	$(BIN)/python -m flows.pipeline

## serve: serve the scheduled Prefect deployment (cron from params.yaml: orchestration.cron)
serve: setup
	$(BIN)/python -m flows.serve

## ui: start the Prefect server and the MLflow UI on 127.0.0.1 and print their URLs
ui: setup
	@mkdir -p .runs
	@PREFECT_HOME=$${PREFECT_HOME:-$(CURDIR)/.prefect} nohup $(BIN)/prefect server start --host $(HOST) --port $(PREFECT_PORT) > .runs/prefect-server.log 2>&1 &
	@nohup $(BIN)/mlflow ui --host $(HOST) --port $(MLFLOW_PORT) --backend-store-uri $${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlflow.db} > .runs/mlflow-ui.log 2>&1 &
	@echo "Prefect UI: http://$(HOST):$(PREFECT_PORT)   (logs: .runs/prefect-server.log)"
	@echo "MLflow UI:  http://$(HOST):$(MLFLOW_PORT)   (logs: .runs/mlflow-ui.log)"
	@echo "Point flows at the server with: export PREFECT_API_URL=http://$(HOST):$(PREFECT_PORT)/api"
