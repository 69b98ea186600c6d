# The two commands a newcomer needs: `make demo` and `make test`.
# Everything else here is what those two are made of.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(CURDIR)/node_modules/.bin:$(PATH)

.PHONY: demo test install generate check-generated lint pytest test-unit bench clean

demo: install  ## Start two local chains, deploy, import demo wallets, serve.
	$(BIN)/balances demo

test: install lint check-generated pytest  ## Everything CI checks.

install: $(VENV)/.installed node_modules/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

generate: install  ## Rewrite generated/ from protos/ (the only way it changes).
	$(BIN)/python scripts/generate_protos.py

check-generated: generate  ## Fail when generated/ differs from what protos/ produce.
	@test -z "$$(git status --porcelain -- generated)" || \
		{ echo "generated/ is stale: run 'make generate' and commit"; git status --short -- generated; exit 1; }

lint: install generate
	buf lint
	$(BIN)/ruff check service tests scripts
	$(BIN)/ruff format --check service tests scripts
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/hadolint Dockerfile

pytest: install
	$(BIN)/pytest -q

test-unit: install  ## The fast half: no sockets, no subprocesses, no chains.
	$(BIN)/pytest -q tests/unit

bench: install  ## Build a world of local chains, measure against references, write BENCHMARKS.md.
	$(BIN)/python -m scripts.bench $(BENCH_ARGS)

clean:
	rm -rf .build .pytest_cache .mypy_cache .ruff_cache
