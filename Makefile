# QueueFlow: `make dev` runs the whole pipeline, `make test` runs every test.
# Both create .venv on first use (Python 3.11+ is all they need) and rebuild it when
# pyproject.toml changes or the project directory has moved.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.queueflow-installed
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help venv dev test test-unit chart-test e2e lint format lock tracker bench bench-smoke clean

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

venv: ## Create .venv and install QueueFlow with its test extras
	@want="$(CURDIR) $$(cksum < pyproject.toml)"; \
	if [ ! -f $(STAMP) ] || [ "$$(cat $(STAMP))" != "$$want" ]; then \
	  $(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	    || { echo "QueueFlow needs Python 3.11 or newer (PYTHON=$(PYTHON))"; exit 2; }; \
	  echo "Creating $(VENV) and installing QueueFlow (first run takes a minute)"; \
	  rm -rf $(VENV) && $(PYTHON) -m venv $(VENV) \
	  && $(BIN)/python -m pip install -q --disable-pip-version-check -e '.[test]' \
	  && echo "$$want" > $(STAMP); \
	fi

dev: venv ## Run the whole pipeline locally (embedded Valkey + PostgreSQL unless URLs are set)
	$(BIN)/queueflow dev

test: venv ## Run the whole test suite against real servers
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: that is a failure"; exit 1; fi; \
	exit $$rc

test-unit: venv ## Only the tests that need no servers
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

chart-test: venv ## The Helm chart, offline: lint, render, validate, and run its commands locally
	$(BIN)/python -m pytest tests/chart $(PYTEST_ARGS)

e2e: venv ## On a machine with Docker and kind: build, install the chart in kind, kill a worker
	$(BIN)/python -m pytest tests/e2e -m e2e $(PYTEST_ARGS)

lint: venv ## ruff check, format check and mypy over services/
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: venv ## Apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

lock: ## Re-resolve the image's hashed pins (requirements*.lock); UPGRADE=1 takes newer releases
	@test -x .venv-lock/bin/uv || { rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock \
	  && .venv-lock/bin/python -m pip install -q --disable-pip-version-check 'uv==0.13.8'; }
	.venv-lock/bin/uv pip compile pyproject.toml --universal --python-version 3.11 \
	  --generate-hashes --custom-compile-command 'make lock' --quiet $(if $(UPGRADE),--upgrade) \
	  -o requirements.lock
	$(PYTHON) -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['build-system']['requires']))" \
	  | .venv-lock/bin/uv pip compile - --universal --python-version 3.11 \
	  --generate-hashes --custom-compile-command 'make lock' --quiet $(if $(UPGRADE),--upgrade) \
	  -o requirements-build.lock

tracker: ## Minify the tracker (ingest/tracker/tracker.js -> tracker.min.js) with terser (npm)
	cd services/queueflow/ingest/tracker && npm ci --no-audit --no-fund --silent && npm run -s build

bench: venv ## Measure speed against the limits (about 50 minutes; see bench/README.md)
	$(BIN)/python -m bench.run

bench-smoke: venv ## Quick ratio check for a 2x slowdown (about a minute)
	$(BIN)/python -m bench.run --smoke

clean: ## Remove .venv and local dev data
	rm -rf $(VENV) .queueflow .pytest_cache .ruff_cache
