# Two entry points for a fresh clone: `make repro` (the pipeline) and `make test` (the checks).
# Both create or reuse the project virtual environment in .venv.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.lesionseg-installed

SCALE_STAMP := $(VENV)/.lesionseg-scale-installed
# The newest PostgreSQL Debian/Ubuntu installed (Debian 12: 15, Ubuntu 24.04: 16); 16's path if there is none yet.
PG_BIN ?= $(or $(lastword $(sort $(wildcard /usr/lib/postgresql/*/bin))),/usr/lib/postgresql/16/bin)

.PHONY: setup repro reproduce-report test test-fast test-slow ruff lint format bench mlflow-ui clean clean-mlflow clean-venv setup-scale \
	postgresql test-services services-up services-down ci-fixture ci-pipeline ci-base ci-report

setup: $(STAMP)

# The torch build for this machine: CUDA with an NVIDIA GPU, else CPU (scripts/setup_venv.sh: uv's
# --torch-backend=auto; pip and the configured index where PyTorch's wheel index cannot be reached).
$(STAMP): pyproject.toml scripts/setup_venv.sh
	$(PYTHON) -m venv $(VENV)
	scripts/setup_venv.sh $(VENV) dev
	touch $@

# The team set-up (docs/scaling-out.md): the .[scale] extra in one resolver run with everything else
# (botocore must suit both boto3 and dvc-s3), and the Debian postgresql package if it is missing.
setup-scale: $(SCALE_STAMP) postgresql

$(SCALE_STAMP): $(STAMP)
	scripts/setup_venv.sh $(VENV) dev,scale
	touch $@

postgresql:
	@test -x $(PG_BIN)/initdb || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql; \
	  else echo "PostgreSQL is missing: sudo apt-get install -y postgresql"; exit 1; fi; }

test-services: setup-scale
	$(BIN)/pytest -m services

services-up: setup-scale
	PATH="$(CURDIR)/$(BIN):$$PATH" scripts/services.sh up

services-down:
	scripts/services.sh down

# `make repro`: the pipeline as the DVC experiment REPRO_NAME of this commit (replacing an earlier one of that
# name), so `lesionseg compare baseline <exp>` has a baseline to name; SET: -S options, e.g. local archives (README).
REPRO_NAME ?= baseline
SET ?=
repro: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" scripts/repro.sh $(REPRO_NAME) $(SET)

# The reference report's table (README, "The reference report, reproduced"): its recipe with 5-fold CV as the
# experiment official-reference, its record, and the pages rendered from it. Official archives and torchvision's
# weights by default; REPORT_DATA: the options for local copies (docs/recipe.md).
REPORT_EXP ?= official-reference
REPORT_DATA ?=
reproduce-report: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc exp run -n $(REPORT_EXP) $$($(BIN)/lesionseg recipe reference) \
	  -S cv.folds=5 $(REPORT_DATA)
	$(BIN)/python scripts/results.py save $(REPORT_EXP)
	$(BIN)/python scripts/results.py render

# The workflow too: actionlint (with shellcheck on its run: steps, from the venv like everything else)
# and zizmor's offline audits, so no GitHub token is needed, here or in a fork's CI.
WORKFLOWS := $(wildcard .github/workflows/*.yml)

ruff: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

lint: ruff
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict   # not --quiet: it hides the warnings --strict fails on
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/actionlint $(WORKFLOWS)
	$(BIN)/zizmor --offline --no-progress $(WORKFLOWS)

# Two tiers (docs/development.md). The fast one: ruff and every unit test, no pipeline run (under 3 min on 2 cores).
# The slow one: the pipeline end to end (dvc repro, dvc exp run, CV, queues), torchrun, servers and the browser.
# `make test` (README, CI): the whole lint, then both tiers, the fast one first. `services`: make test-services.
FAST := -m "not slow and not services"
SLOW := -m "slow and not services"

test-fast: ruff
	$(BIN)/pytest $(FAST)

test-slow: setup browser
	$(BIN)/pytest $(SLOW)

test: lint browser
	$(BIN)/pytest $(FAST)
	$(BIN)/pytest $(SLOW)

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The documentation site (mkdocs.yml): built into site/, served at http://127.0.0.1:8000 with live reload;
# docs-figures copies the last run's report figures (reports/figures) into docs/img, downscaled.
.PHONY: docs docs-serve docs-figures
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

docs-serve: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

docs-figures: setup
	$(BIN)/python scripts/docs_figures.py --figures reports/figures --out docs/img

# CI: the pipeline re-run and the report of what a change did. The GitHub workflow
# (.github/workflows/ci.yml) runs these on generated archives; .ci/run on ../shared/data/isic2016-mini
# (it sets CI_SOURCE, CI_WEIGHTS, CI_SET, CI_CHECK and the pair counts). docs/ci.md explains them.
CI_BUILD ?= build/ci
CI_TRAIN_PAIRS ?= 32
CI_TEST_PAIRS ?= 16
CI_SOURCE ?= $(CURDIR)/$(CI_BUILD)/fixture
# imagenet: torchvision downloads them (from the host of the CPU torch wheels); a random encoder (none)
# barely learns in two epochs. Offline: the path of a copy, e.g. ../shared/weights/mobilenet_v2_imagenet.pth
CI_WEIGHTS ?= imagenet
# ++: add finetune.epochs, or set it where params.yaml has it (a base commit's may)
CI_SET ?= -S data.size=64 -S train.epochs=2 -S ++finetune.epochs=1
CI_CHECK ?=
CI_DIR ?= .
CI_NAME ?= ci-head
CI_BASE_REV ?= HEAD^1
CI_BASE_DIR ?= $(CI_BUILD)/base
CI_BASE ?= $(CI_BASE_DIR)/reports
CI_HEAD ?= reports
CI_BASE_LABEL ?= base $(shell git rev-parse --short $(CI_BASE_REV) 2>/dev/null)
CI_HEAD_LABEL ?= head $(shell git rev-parse --short HEAD 2>/dev/null)
CI_NOTE ?= Data: $(CI_TRAIN_PAIRS) training and $(CI_TEST_PAIRS) test pairs generated by \
  scripts/make_fixture_archives.py, a short schedule ($(CI_SET)): this shows what the change does, not accuracy on real lesions.
# On GitHub the report is also appended to the job summary.
CI_SUMMARY ?= $(GITHUB_STEP_SUMMARY)

ci-fixture: setup
	$(BIN)/python scripts/make_fixture_archives.py $(CI_SOURCE) --train $(CI_TRAIN_PAIRS) --test $(CI_TEST_PAIRS)

# `dvc exp run -n CI_NAME` in CI_DIR on CI_SOURCE, then the checks of scripts/check_ci_run.py.
ci-pipeline: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" scripts/ci_pipeline.sh $(CI_DIR) $(CI_NAME) $(CURDIR)/$(CI_BUILD)/logs/$(CI_NAME).log \
	  -S download.source=$(CI_SOURCE) -S data.expected_train=$(CI_TRAIN_PAIRS) -S data.expected_test=$(CI_TEST_PAIRS) \
	  -S train.encoder_weights=$(CI_WEIGHTS) $(CI_SET)
	cd $(CI_DIR) && $(CURDIR)/$(BIN)/python $(CURDIR)/scripts/check_ci_run.py $(CI_NAME) $(CI_CHECK)

# The same pipeline on the base commit (a pull request's merge commit's first parent), in a worktree.
ci-base: setup
	rm -rf $(CI_BASE_DIR) && git worktree prune
	git worktree add --detach $(CI_BASE_DIR) $(CI_BASE_REV)
	$(MAKE) ci-pipeline CI_DIR=$(CI_BASE_DIR) CI_NAME=ci-base

# CI_BASE and CI_HEAD: reports folders, git revisions or DVC experiments.
ci-report: setup
	$(BIN)/python scripts/ci_report.py $(CI_BASE) $(CI_HEAD) --out $(CI_BUILD)/report --note "$(CI_NOTE)" \
	  $(if $(CI_BASE_LABEL),--base-label "$(CI_BASE_LABEL)") $(if $(CI_HEAD_LABEL),--head-label "$(CI_HEAD_LABEL)") \
	  $(if $(CI_SUMMARY),--append-to "$(CI_SUMMARY)")

# e.g. make bench BENCH_ARGS="--device cuda --batch-size 64 --parts train,infer"
BENCH_ARGS ?=
bench: setup
	$(BIN)/python benchmarks/bench.py $(BENCH_ARGS)

# On a machine with an NVIDIA GPU: the CUDA tests, the pipeline on the GPU, a 2-GPU DDP run where there are two,
# and the benchmark's GPU rows, in under 8 minutes, into build/gpu-check/summary.{json,md} (docs/benchmarks.md).
.PHONY: gpu-check
gpu-check: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python scripts/gpu_check.py --out build/gpu-check

# Debian's Chromium for the browser test of the MLflow UI (tests/browser.py; Playwright comes with .[dev] and
# drives it, never downloading a browser of its own). Without it that test is skipped.
.PHONY: browser
browser:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; \
	  else echo "chromium is missing, the browser test will be skipped: sudo apt-get install -y chromium"; fi; }

# Starts the UI on the pipeline's store and prints the link to the runs table with the headline columns
# (docs/mlflow-ui.md); with MLFLOW_TRACKING_URI set to a server, prints that server's link only.
MLFLOW_UI_PORT ?= 5000
mlflow-ui: setup
	$(BIN)/python scripts/mlflow_ui.py --host 127.0.0.1 --port $(MLFLOW_UI_PORT)

# Pipeline outputs and DVC's experiment state, .dvc/tmp: queued experiments too (not the DVC cache, the downloads
# or the MLflow store).
clean:
	rm -rf data/raw data/prepared models reports/history reports/per_image reports/figures reports/cv
	rm -f data/external/*.pt data/external/*.json
	rm -f reports/metrics.json reports/comparison.md reports/comparison.csv
	rm -rf .dvc/tmp

# The local MLflow store: every run and artifact logged so far.
clean-mlflow:
	rm -rf mlflow.db mlartifacts

clean-venv:
	rm -rf $(VENV)
