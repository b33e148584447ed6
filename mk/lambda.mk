# Lambda, SAM and lint targets; see docs/deploy.md. Included by the top-level Makefile, which
# defines TOOLS_DIR and CARGO. The tools (aws CLI, boto3, cargo-lambda, SAM CLI, cfn-lint) live in
# a venv outside the work tree, installed once by scripts/tools.sh.
#
#   make tools                      install the tools (once)
#   make lint                       cfn-lint + sam validate --lint, then cargo fmt --check and clippy
#                                   (also of the function's build, without the `push` feature)
#   make lambda-build               cargo lambda build --release (x86_64, what CI builds)
#   make lambda-build-arm64         the arm64 build the template deploys (best effort on x86_64 hosts)
#   make watch [LAMBDA_PORT=9000]   cargo lambda watch against the local S3/DynamoDB servers
#   make invoke EVENT=<name>        send events/<name>.json to the watched function
#   make test-lambda                every fixture in events/ through a watcher of its own, checked
#   make sam-build                  sam build (compiles the function with cargo-lambda, arm64)
#   make deploy                     sam build && sam deploy --guided (needs AWS credentials)
#
# Every `cargo lambda build` and `cargo lambda watch` here, and the one `sam build` runs, builds the
# function without the default `push` feature (the push client and aws-sdk-ecr): Cargo.toml's
# [package.metadata.lambda.build] and [package.metadata.lambda.watch] say `no_default_features`.

TOOLS_SH := scripts/tools.sh
LAMBDA_TOOLS_BIN := $(shell TOOLS_DIR='$(TOOLS_DIR)' $(TOOLS_SH) path)
LAMBDA_PORT ?= 9000
LAMBDA_FUNCTION := ecr-layer-upload
# Region for offline validation only; sam deploy --guided asks for the real one.
LINT_REGION ?= us-east-1
# Prefix for recipes that use the tools: venv first on PATH, no SAM CLI telemetry.
WITH_TOOLS = PATH="$(LAMBDA_TOOLS_BIN):$$PATH" SAM_CLI_TELEMETRY=0

.PHONY: tools lint lint-template lambda-build lambda-build-arm64 watch invoke test-lambda sam-build \
	deploy

tools:
	@$(TOOLS_SH) install

lint-template: tools
	$(WITH_TOOLS) cfn-lint template.yaml
	$(WITH_TOOLS) AWS_DEFAULT_REGION=$(LINT_REGION) sam validate --lint --template-file template.yaml

lint: lint-template
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) clippy --no-default-features --lib --bins -- -D warnings

lambda-build: tools
	$(WITH_TOOLS) $(CARGO) lambda build --release

lambda-build-arm64: tools
	$(WITH_TOOLS) $(CARGO) lambda build --release --arm64

# Start the local servers first (`make services-up`); their endpoints, bucket, table and
# credentials come from `scripts/services.sh env`. -A 127.0.0.1: cargo-lambda's default is every
# interface. ECR_AUTH defaults to none here (the emulator takes any credentials); ECR_AUTH=sigv4
# make watch checks signatures against the keys in the table (docs/security.md). Note: watch does
# not enforce Lambda's 6 MB request limit.
watch: tools
	@mkdir -p target
	scripts/services.sh env > target/lambda-watch.env
	echo "ECR_AUTH=$${ECR_AUTH:-none}" >> target/lambda-watch.env
	$(WITH_TOOLS) env $$(cat target/lambda-watch.env) \
		$(CARGO) lambda watch -A 127.0.0.1 -P $(LAMBDA_PORT) --env-file target/lambda-watch.env

invoke: tools
	@if [ -z "$(EVENT)" ]; then \
		echo "usage: make invoke EVENT=<name>, one of:" >&2; \
		ls events | sed -n 's/\.json$$//p' | sed 's/^/  /' >&2; \
		exit 2; \
	fi
	@test -f events/$(EVENT).json || { echo "events/$(EVENT).json does not exist" >&2; exit 2; }
	$(WITH_TOOLS) $(CARGO) lambda invoke -A 127.0.0.1 -P $(LAMBDA_PORT) $(LAMBDA_FUNCTION) \
		--data-file events/$(EVENT).json

# Every fixture in events/ through `cargo lambda watch` + `cargo lambda invoke`, each answer checked
# against tests/fixtures/expected.json (tests/lambda/invoke_fixtures.py). The script starts and stops a watcher of its own (AWS backend,
# the local servers' environment) on TEST_LAMBDA_PORT, by default the first free port from 39500,
# so a `make watch` on LAMBDA_PORT may keep running.
TEST_LAMBDA_PORT ?=
test-lambda: tools services-up
	$(WITH_TOOLS) CARGO='$(CARGO)' LAMBDA_PORT='$(TEST_LAMBDA_PORT)' \
		python3 tests/lambda/invoke_fixtures.py

sam-build: tools
	$(WITH_TOOLS) sam build

deploy: sam-build
	$(WITH_TOOLS) sam deploy --guided
