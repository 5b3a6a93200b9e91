# Two entry points for a fresh clone: `make repro` (the pipeline) and `make test` (the checks).
# Both create or reuse the project virtual environment in .venv.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.lesionseg-installed

SCALE_STAMP := $(VENV)/.lesionseg-scale-installed
PG_BIN ?= /usr/lib/postgresql/15/bin

.PHONY: setup repro test lint format bench mlflow-ui clean clean-mlflow clean-venv setup-scale postgresql test-services services-up services-down

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

# The team set-up (docs/scaling-out.md): the .[scale] extra in one resolver run with everything else
# (botocore must suit both boto3 and dvc-s3), and the Debian postgresql package if it is missing.
setup-scale: $(SCALE_STAMP) postgresql

$(SCALE_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,scale]'
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

repro: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict   # not --quiet: it hides the warnings --strict fails on

test: lint browser
	$(BIN)/pytest

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

# e.g. make bench BENCH_ARGS="--device cuda --batch-size 64 --parts train,infer"
BENCH_ARGS ?=
bench: setup
	$(BIN)/python benchmarks/bench.py $(BENCH_ARGS)

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

# Pipeline outputs and DVC's experiment state (not the DVC cache, the downloads or the MLflow store).
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
