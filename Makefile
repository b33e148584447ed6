# ecr-layer-upload: see README.md. `make run` serves the API on 127.0.0.1:8080 (embedded backend);
# `make test` runs every test suite (installing the local tools it needs on first use).

SHELL := /bin/bash
CARGO ?= cargo
# Tools (Python venvs, protocol servers) live outside the work tree so a kept machine reuses them.
TOOLS_DIR ?= $(HOME)/.cache/ecr-layer-upload
export TOOLS_DIR

.PHONY: all build release run test unit fmt clippy bench bench-registry bench-rss clean

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

# The side-by-side benchmark (benches/compare.rs): direct S3 multipart vs the service on
# both backends, against the project's own local S3 and DynamoDB servers, started here on ports and
# a state directory of their own and stopped afterwards. `make bench BENCH_SIZE_MIB=1024` for 1 GiB;
# `BENCH_ONLY=layer`, `image`, `completion` or `rss` (or a comma-separated list) runs only the one-layer
# comparison, the 4-layer push, the verification modes or the peak RSS by layer size.
# Then the CPU cost of verifying a signed 10 MiB part (benches/auth.rs).
BENCH_SIZE_MIB ?= 256
BENCH_ROUNDS ?= 3
BENCH_ONLY ?=
BENCH_S3_PORT ?= 41333
BENCH_DYNAMODB_PORT ?= 41400
BENCH_SERVICES_DIR ?= $(CURDIR)/target/bench-services
bench:
	$(CARGO) bench --no-run --bench compare
	export ECR_S3_PORT=$(BENCH_S3_PORT) ECR_DYNAMODB_PORT=$(BENCH_DYNAMODB_PORT) \
	       ECR_SERVICES_DIR=$(BENCH_SERVICES_DIR); \
	trap 'scripts/services.sh down; rm -rf "$$ECR_SERVICES_DIR"' EXIT; \
	scripts/services.sh up || exit 1; \
	set -a; eval "$$(scripts/services.sh env)"; set +a; \
	BENCH_SIZE_MIB=$(BENCH_SIZE_MIB) BENCH_ROUNDS=$(BENCH_ROUNDS) BENCH_ONLY=$(BENCH_ONLY) \
	  $(CARGO) bench --bench compare
	$(CARGO) bench --bench auth
	$(MAKE) bench-registry

# skopeo pushing and pulling one BENCH_SIZE_MIB layer to and from this server and Debian's
# docker-registry (distribution) side by side: throughput and peak memory (scripts/bench_registry.sh).
bench-registry:
	$(CARGO) build --release --bin ecr-layer-upload
	BENCH_SIZE_MIB=$(BENCH_SIZE_MIB) BENCH_ROUNDS=$(BENCH_ROUNDS) \
	ECR_BIN=target/release/ecr-layer-upload scripts/bench_registry.sh

# Peak memory and throughput for 64 MiB and 1 GiB layers in Lambda-sized parts, one backend.
bench-rss:
	$(CARGO) bench --bench push

fmt:
	$(CARGO) fmt --all

clippy:
	$(CARGO) clippy --all-targets -- -D warnings

include $(wildcard mk/*.mk)

clean:
	$(CARGO) clean
