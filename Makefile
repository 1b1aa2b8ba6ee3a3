# The two commands: `make run` starts the whole stack on loopback, `make test` runs every test.
SHELL := /bin/bash
.DEFAULT_GOAL := help
CARGO ?= cargo

.PHONY: help setup run test api-check invoke-events build-lambda lint lint-template fmt

help:
	@echo "make run    start the local stack (DynamoDB, SQS, providers, API on 127.0.0.1:\$${PORT:-3000}, worker)"
	@echo "make test   install the pinned tools, then run every test"
	@echo "make lint   cargo fmt --check, clippy -D warnings, template linters"
	@echo "make api-check      Schemathesis against the local stack, checked with openapi.yaml"
	@echo "make invoke-events  run every events/*.json through the functions under cargo lambda watch"
	@echo "make build-lambda   build the arm64 bootstraps into target/lambda/<function>/bootstrap"

setup:
	@scripts/install-local-tools.sh moto

# Says what it does at each step; cargo shows its progress (the first build takes about 7 minutes
# on 2 cores). `exec`: make's child is the stack itself, which gets the SIGTERM make passes on when
# it is stopped (`kill -TERM`), and stops as on Ctrl-C.
run: setup
	@echo "make run: building local-stack and enrichctl (debug; the first build takes several minutes)"
	$(CARGO) build -p local-stack -p enrichctl
	@echo "make run: starting the local stack (DynamoDB, SQS, provider simulator, gateway, worker)"
	@exec "$${CARGO_TARGET_DIR:-target}/debug/local-stack"

# The function binaries first: the bootstrap and fault tests run them under the Lambda Runtime
# API emulator.
test: setup
	$(CARGO) build -q --workspace --bins
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace --no-fail-fast; \
	else \
		$(CARGO) test --workspace --no-fail-fast; \
	fi

# Schemathesis (pinned, .local/venv-schemathesis) against a private local stack, with the document
# the gateway serves (openapi.yaml): about 2 minutes.
api-check: setup
	@scripts/api-check.sh

invoke-events: setup
	@scripts/invoke-events.sh

# The Lambda bootstraps, for provided.al2023 on arm64, as `sam build` makes them.
build-lambda:
	@bin="$$(scripts/install-lambda-tools.sh --arm64)" && PATH="$$bin:$$PATH" && \
		$(CARGO) lambda build --release --arm64 -p trigger -p worker -p status -p people -p batch -p credits -p cancel -p webhook-settings -p outbox-relay -p webhook-delivery
	@ls -l target/lambda/*/bootstrap

lint: lint-template
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

lint-template:
	@scripts/lint-template.sh

fmt:
	$(CARGO) fmt --all
