# ecr-layer-upload: see README.md. `make run` serves the API on 127.0.0.1:8080 (embedded backend);
# `make test` runs every test suite (installing the local tools it needs on first use).

SHELL := /bin/bash
CARGO ?= cargo
# Tools (Python venvs, protocol servers) live outside the work tree so a kept machine reuses them.
TOOLS_DIR ?= $(HOME)/.cache/ecr-layer-upload
export TOOLS_DIR

.PHONY: all build release run test unit fmt clippy bench clean

all: build

build:
	$(CARGO) build --all-targets

release:
	$(CARGO) build --release

run:
	$(CARGO) run --release -- serve

# Both backends, every client: see scripts/test.sh.
test:
	CARGO=$(CARGO) scripts/test.sh

# Fast loop: the library's tests and the suites that need no servers (tests/unit).
unit:
	$(CARGO) test --lib --test unit

# Peak memory and throughput for 64 MiB and 1 GiB layers in Lambda-sized parts; the CPU cost of
# verifying a signed 10 MiB part (benches/auth.rs).
bench:
	$(CARGO) bench --bench push
	$(CARGO) bench --bench auth

fmt:
	$(CARGO) fmt --all

clippy:
	$(CARGO) clippy --all-targets -- -D warnings

include $(wildcard mk/*.mk)

clean:
	$(CARGO) clean
