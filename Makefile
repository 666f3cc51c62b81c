# losslab: `make sweep` runs the study, `make test` runs the suite. `make help` lists all.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 5000
HOST ?= 127.0.0.1
STORE := sqlite:///$(CURDIR)/mlflow.db
ARTIFACTS := $(CURDIR)/mlartifacts
# `make server`: the team's tracking server keeps its own store; PostgreSQL works too, e.g.
# SERVER_STORE=postgresql://user:password@dbhost:5432/mlflow (after pip install psycopg2-binary).
SERVER_STORE ?= sqlite:///$(CURDIR)/server-store/mlflow.db
SERVER_ARTIFACTS ?= $(CURDIR)/server-store/artifacts
MLFLOW_ARGS ?=
CHROMIUM := /usr/bin/chromium

.DEFAULT_GOAL := help
.PHONY: help install lint format test sweep study ui server browser slurm slurm-stop bench clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The CPU wheel first, pinned, so nothing can resolve torch to a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -c requirements.lock -e '.[dev]'
	touch $@

install: $(VENV)/.installed ## Create .venv with torch 2.13.0 (CPU) and the pinned dependencies

lint: install ## ruff check and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install ## Apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: install ## Run the test suite (2 workers, 10-12 minutes on 2 cores; 39 on a slow day)
	$(PY) -m pytest -n 2 --dist loadfile  # two workers: the suite is mostly subprocesses

sweep: install ## The five-loss study over 5 seeds, with the comparison table at the end
	$(PY) -m src.train -m loss=mse,msle,mae,bce,hinge seed=0,1,2,3,4

EXPERIMENTS ?= regression binary multiclass outliers msle_positive
study: install ## Every preset in conf/experiment/, one sweep each (EXPERIMENTS="a b" for some)
	@status=0; for name in $(EXPERIMENTS); do \
		echo "== experiment=$$name"; $(PY) -m src.train -m experiment=$$name || status=1; \
	done; exit $$status

ui: install ## Browse every run in the MLflow UI (PORT=5000), bound to 127.0.0.1
	@$(PY) -m src.serve --host $(HOST) --port $(PORT) --store $(STORE) --artifacts $(ARTIFACTS) \
		$(MLFLOW_ARGS)

server: install ## Team tracking server (PORT=5000): own store, artifacts served over HTTP
	@$(PY) -m src.serve --team --host $(HOST) --port $(PORT) --store $(SERVER_STORE) \
		--artifacts $(SERVER_ARTIFACTS) $(MLFLOW_ARGS)

browser: ## Install Chromium (Debian package, as root) for the UI's browser test
	@if [ -x $(CHROMIUM) ]; then \
		echo "browser: $$($(CHROMIUM) --version 2>/dev/null)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update && apt-get install -y chromium; \
	else \
		echo "browser: $(CHROMIUM) is missing and installing it needs root (apt-get install" \
			"chromium); the browser test will be skipped"; \
	fi

slurm: ## A one-node SLURM cluster with accounting on this machine (Debian, root; about a minute)
	@scripts/slurm.sh up

slurm-stop: ## Stop the SLURM cluster's daemons (packages and accounting database stay)
	@scripts/slurm.sh down

bench: install ## Speed benchmarks against a plain-PyTorch baseline (prints ratios)
	$(PY) -m bench.run

clean: ## Remove outputs, sweeps and the local MLflow store (asks no questions)
	rm -rf outputs multirun mlflow.db mlartifacts
