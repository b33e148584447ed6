#!/usr/bin/env bash
# `make test`: every suite, against both backends, on one debug build.
#
# Installs what it needs on first use (client tools, the local S3 and DynamoDB servers), starts
# the servers on 127.0.0.1 unless they are already running, and stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}

step() { printf '\n== %s\n' "$*"; }

step "tools"
scripts/tools.sh install
scripts/tools.sh system
# The push suite's test of skopeo-written archives must run here, not skip.
export ECR_TEST_REQUIRE_SKOPEO=1
# And podman's (tests/e2e/oci_podman.rs, tests/lambda/oci_pull.py): rootful, so as root only.
# Likewise docker's and containerd's (tests/e2e/oci_docker.rs, tests/lambda/oci_pull.py), whose
# tests start daemons of their own: installed, they are skipped (with the reason) only where the
# daemon cannot start on the machine.
if [ "$(id -u)" = 0 ]; then
    export ECR_TEST_REQUIRE_PODMAN=1
    export ECR_TEST_REQUIRE_DOCKER=1
fi
PATH="$(scripts/tools.sh path):$PATH"
export PATH
# @aws-sdk/client-ecr for tests/clients/js (installed by `scripts/tools.sh install`).
NODE_PATH="$(scripts/tools.sh node-path)"
export NODE_PATH

step "local S3 and DynamoDB servers"
started=0
if ! scripts/services.sh status >/dev/null 2>&1; then
    started=1
    # Servers started here keep their state in a directory of this run's own: the suites leave
    # objects and items behind, which would otherwise pile up run after run. It is removed when
    # the run passes, and kept (with the servers' logs) when it fails.
    ECR_SERVICES_DIR="$(mktemp -d "${TMPDIR:-/tmp}/ecr-test-services.XXXXXX")"
    export ECR_SERVICES_DIR
fi
cleanup() {
    local status=$?
    if [ "$started" = 1 ]; then
        scripts/services.sh down || true
        if [ "$status" = 0 ]; then
            rm -rf "$ECR_SERVICES_DIR"
        else
            echo "test.sh: the servers' state and logs are kept in $ECR_SERVICES_DIR" >&2
        fi
    fi
}
trap cleanup EXIT
scripts/services.sh up
# AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL_DYNAMODB, ECR_BUCKET, ECR_TABLE, region, credentials.
while IFS= read -r line; do
    [ -n "$line" ] && export "${line?}"
done < <(scripts/services.sh env)
# Servers started by the suites pick their backend from ECR_TEST_BACKEND, not ECR_BACKEND.
unset ECR_BACKEND

step "build"
$CARGO build --lib --bins --tests

# tests/unit (no servers), tests/aws (the AWS backend in-process) and tests/e2e (the binary with
# aws-sdk-ecr and the push command) on the embedded backend.
step "Rust suites (unit, storage contract and service on the AWS backend, end to end on local)"
# The in-process suites wait on files and on the local servers far more than on the CPU: more
# threads than cores finish them in about half the time.
ECR_TEST_BACKEND=local $CARGO test --lib --bins --test unit --test aws -- --test-threads 8
ECR_TEST_BACKEND=local $CARGO test --test e2e

step "end to end (aws-sdk-ecr and the push command) against the AWS backend"
ECR_TEST_BACKEND=aws $CARGO test --test e2e

export ECR_BIN=target/debug/ecr-layer-upload
step "boto3 and aws CLI against the embedded backend (ECR_AUTH=none, then sigv4 with keys)"
ECR_TEST_BACKEND=local python3 -m unittest -v tests/clients/test_clients.py
ECR_TEST_BACKEND=local python3 -m unittest -v tests/clients/test_auth_clients.py
step "the JavaScript SDK against the embedded backend (ECR_AUTH=sigv4 with keys)"
ECR_TEST_BACKEND=local node tests/clients/js/auth_clients.cjs

step "boto3 and aws CLI against the AWS backend (ECR_AUTH=none, then sigv4 with keys)"
ECR_TEST_BACKEND=aws python3 -m unittest -v tests/clients/test_clients.py
ECR_TEST_BACKEND=aws python3 -m unittest -v tests/clients/test_auth_clients.py
step "the JavaScript SDK against the AWS backend (ECR_AUTH=sigv4 with keys)"
ECR_TEST_BACKEND=aws node tests/clients/js/auth_clients.cjs

if [ -f tests/lambda/invoke_fixtures.py ]; then
    step "every event fixture through cargo lambda watch + invoke"
    # The function with the test build's features, so the watcher reuses that build; the
    # push-free build that is deployed is compiled and linted by `make lint` and `make lambda-build`.
    LAMBDA_WATCH_FEATURES=default python3 tests/lambda/invoke_fixtures.py
    step "boto3 signing for the watcher's Function URL address (ECR_AUTH=sigv4, keys in DynamoDB)"
    LAMBDA_WATCH_FEATURES=default python3 tests/lambda/signed_watch.py
fi

step "all suites passed"
