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

install: $(VENV)/.installed node_modules/.installed .build/go-deps.installed

# The generated Go client's dependencies, from Debian's sources (GOPATH mode, no
# module proxy), compiled into the cache its test builds with
# (tests/support/clients/build.py): the test then builds in seconds. Without Go
# (.ci/run installs it) only that test fails, so the rest of install goes on.
GO_CLIENT_DEPS := google.golang.org/grpc google.golang.org/grpc/metadata \
	google.golang.org/grpc/status google.golang.org/genproto/googleapis/rpc/errdetails \
	google.golang.org/genproto/googleapis/api/annotations \
	google.golang.org/protobuf/encoding/protojson github.com/golang/protobuf/proto
.build/go-deps.installed:
	@if command -v go >/dev/null; then \
		mkdir -p .build && GO111MODULE=off GOFLAGS= GOPROXY=off GOPATH=/usr/share/gocode \
		GOCACHE=$(CURDIR)/.build/go-cache go build $(GO_CLIENT_DEPS) && touch $@; \
	else echo "go not found: the generated Go client's test will fail (.ci/run installs Go)"; fi

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
	$(BIN)/python -m scripts.check_breaking  # buf breaking against the protos before their last change
	$(BIN)/ruff check service tests scripts
	$(BIN)/ruff format --check service tests scripts
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/hadolint Dockerfile
	promtool check rules deploy/alerts.yaml

pytest: install
	$(BIN)/pytest -q

test-unit: install  ## The fast half: no sockets, no subprocesses, no chains.
	$(BIN)/pytest -q tests/unit

bench: install  ## Build a world of local chains, measure against references, write BENCHMARKS.md.
	$(BIN)/python -m scripts.bench $(BENCH_ARGS)

clean:
	rm -rf .build .pytest_cache .mypy_cache .ruff_cache
