# rbee: the two commands users need are `make up` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: setup build release install llama-server test test-faults up bench bench-cluster schemas fmt lint clean-data

## setup: install what is missing into project-local, git-ignored places (.venv/, .rbee/); idempotent
setup:
	@./scripts/setup.sh

## One profile for everything: `make up`, `make test` and `make bench` all build with `--release`, so
## llama.cpp (the slow part: about 9 minutes cold on 2 cores) is compiled once and shared by all three.

## build: optimized build of every binary (what `make up` runs and the tests start)
build: setup
	$(CARGO) build --workspace --bins --release

## release: the same as build (kept for scripts that call it)
release: build

## install: put `rbee` (and its daemons) on your PATH, as links into ~/.cargo/bin ($RBEE_BIN_DIR to choose)
install: build
	@./scripts/install.sh

## test: setup, build, then the whole suite against real nats-servers, workers and the real model
## (the fault-injection tests included: they take turns, one cluster at a time)
test: build
	$(CARGO) test --release --workspace --no-fail-fast
	./scripts/check-compose.sh

## test-faults: just the fault injection against a running cluster (nats restart, kill -9, partitions, load)
test-faults: build
	$(CARGO) test --release -p rbee-queen --test faults -- --test-threads 1

## up: start a local cluster (nats-server, queen, hive, one worker of the default model) and serve
up: release
	./target/release/rbee up $(ARGS)

## llama-server: build llama.cpp's own server (the baseline make bench compares against; ~12 min)
llama-server: setup
	@./scripts/llama-server.sh

## bench: measure every hop against its floor; writes BENCHMARKS.md and BENCHMARKS.json
bench: release
	./scripts/bench.sh

## bench-cluster: the cluster across three hosts of their own (network namespaces; needs root and ip)
bench-cluster: release
	target/release/rbee-bench --root . $(BENCH_ARGS) hosts

## schemas: regenerate schemas/ from the Rust types in bus/
schemas:
	UPDATE_SCHEMAS=1 $(CARGO) test --release -p rbee-bus --test schemas

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings

## clean-data: remove the local cluster's data (models stay)
clean-data:
	rm -rf .rbee/data
