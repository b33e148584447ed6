#!/usr/bin/env bash
# `make soak`: the soak runs of tests/common/soak.rs on the embedded backend and on the local S3
# and DynamoDB servers (with faults injected into the SDK clients), each bounded by
# ECR_SOAK_SECS (60 s by default) with ECR_SOAK_CLIENTS clients (8). Prints one line of figures
# per backend: uploads, layers, bytes, cuts, duplicate parts, retries, faults injected, failures,
# wrong bytes, orphans left, peak RSS.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}

scripts/tools.sh install
PATH="$(scripts/tools.sh path):$PATH"
export PATH

started=0
if ! scripts/services.sh status >/dev/null 2>&1; then
    started=1
    ECR_SERVICES_DIR="$(mktemp -d "${TMPDIR:-/tmp}/ecr-soak-services.XXXXXX")"
    export ECR_SERVICES_DIR
fi
cleanup() {
    if [ "$started" = 1 ]; then
        scripts/services.sh down || true
        rm -rf "$ECR_SERVICES_DIR"
    fi
}
trap cleanup EXIT
scripts/services.sh up
while IFS= read -r line; do
    [ -n "$line" ] && export "${line?}"
done < <(scripts/services.sh env)
unset ECR_BACKEND

$CARGO test --test unit soak_embedded -- --ignored --nocapture --test-threads=1
$CARGO test --test aws soak_aws -- --ignored --nocapture --test-threads=1
