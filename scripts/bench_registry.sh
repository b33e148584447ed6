#!/usr/bin/env bash
# `make bench-registry`: skopeo pushes and pulls one layer of BENCH_SIZE_MIB (256 by default) to
# and from this server (embedded backend, `serve`) and Debian's docker-registry (distribution,
# filesystem storage), both on 127.0.0.1 with their storage under target/bench-registry (the same
# disk), one after the other. Prints, side by side, the median throughput of BENCH_ROUNDS rounds
# (3 by default) for push and pull, and each server's peak resident memory (VmHWM) over the run.
# This server runs twice, side by side: with the default verification (CompleteLayerUpload reads
# the layer back through SHA-256) and with ECR_VERIFY=incremental (the chunks advance a SHA-256
# state as they arrive, as distribution hashes while it receives).
#
# Each round pushes a layer of fresh random bytes to a repository of its own (so no client
# skips the upload because the registry, or its own cache, knows the blob), then pulls it into an
# empty OCI layout. Needs the release binary (the Makefile builds it), skopeo and docker-registry
# (installed here with apt-get when missing; needs root or sudo).
set -euo pipefail
cd "$(dirname "$0")/.."

SIZE_MIB=${BENCH_SIZE_MIB:-256}
ROUNDS=${BENCH_ROUNDS:-3}
BIN=${ECR_BIN:-target/release/ecr-layer-upload}
OURS_PORT=${BENCH_OURS_PORT:-41580}
DIST_PORT=${BENCH_DISTRIBUTION_PORT:-41581}
INCR_PORT=${BENCH_INCREMENTAL_PORT:-41582}
WORK=${BENCH_REGISTRY_DIR:-$PWD/target/bench-registry}
READY_SECS=30

need_packages() {
  local missing=() p
  for p in skopeo docker-registry; do
    command -v "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  [[ ${#missing[@]} == 0 ]] && return 0
  local sudo=()
  [[ "$(id -u)" == 0 ]] || sudo=(sudo)
  echo "bench_registry: installing ${missing[*]} with apt-get" >&2
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
}

[[ -x "$BIN" ]] || { echo "bench_registry: $BIN missing (cargo build --release)" >&2; exit 1; }
need_packages

rm -rf "$WORK"
mkdir -p "$WORK"
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

wait_ready() { # url pid
  local i
  for ((i = 0; i < READY_SECS * 10; i++)); do
    kill -0 "$2" 2>/dev/null || { echo "bench_registry: server $2 exited" >&2; return 1; }
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "bench_registry: $1 not ready in $READY_SECS s" >&2
  return 1
}

# This server: embedded backend, no authentication, repositories created by the first push;
# once per verification mode.
start_ours() { # name port verify
  mkdir -p "$WORK/$1"
  ECR_BACKEND=local ECR_DATA_DIR="$WORK/$1" ECR_LISTEN="127.0.0.1:$2" ECR_AUTH=none \
    ECR_CREATE_ON_PUSH=true ECR_VERIFY="$3" RUST_LOG=warn "$BIN" serve >"$WORK/$1.log" 2>&1 &
}
start_ours ours "$OURS_PORT" stream
OURS_PID=$!
pids+=("$OURS_PID")
start_ours ours-incremental "$INCR_PORT" incremental
INCR_PID=$!
pids+=("$INCR_PID")

# distribution: filesystem storage, no authentication, no background health checks.
mkdir -p "$WORK/distribution"
cat >"$WORK/distribution.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $WORK/distribution
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$DIST_PORT
EOF
docker-registry serve "$WORK/distribution.yml" >"$WORK/distribution.log" 2>&1 &
DIST_PID=$!
pids+=("$DIST_PID")

wait_ready "http://127.0.0.1:$OURS_PORT/v2/" "$OURS_PID"
wait_ready "http://127.0.0.1:$INCR_PORT/v2/" "$INCR_PID"
wait_ready "http://127.0.0.1:$DIST_PORT/v2/" "$DIST_PID"

# One layout per round: a layer of fresh random bytes, its config and manifest.
make_layout() { # dir
  python3 - "$1" "$SIZE_MIB" <<'EOF'
import hashlib, json, os, sys
out, mib = sys.argv[1], int(sys.argv[2])
blobs = os.path.join(out, "blobs", "sha256")
os.makedirs(blobs)
open(os.path.join(out, "oci-layout"), "w").write('{"imageLayoutVersion":"1.0.0"}')
h = hashlib.sha256()
tmp = os.path.join(blobs, "layer.tmp")
with open(tmp, "wb") as f:
    for _ in range(mib):
        chunk = os.urandom(1 << 20)
        h.update(chunk)
        f.write(chunk)
layer = "sha256:" + h.hexdigest()
os.rename(tmp, os.path.join(blobs, h.hexdigest()))
def put(doc):
    data = json.dumps(doc, separators=(",", ":")).encode()
    d = hashlib.sha256(data).hexdigest()
    open(os.path.join(blobs, d), "wb").write(data)
    return {"digest": "sha256:" + d, "size": len(data)}
config = put({"architecture": "amd64", "os": "linux", "config": {},
              "rootfs": {"type": "layers", "diff_ids": [layer]}})
manifest = put({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                            "digest": layer, "size": mib << 20}]})
json.dump({"schemaVersion": 2, "manifests": [{
    "mediaType": "application/vnd.oci.image.manifest.v1+json", **manifest,
    "annotations": {"org.opencontainers.image.ref.name": "v1"}}]},
    open(os.path.join(out, "index.json"), "w"))
EOF
}

now() { date +%s.%N; }
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.3f}')" "$1" "$2"; }

declare -A PUSH PULL
names=(ours ours-incremental distribution)
declare -A PORT=([ours]=$OURS_PORT [ours-incremental]=$INCR_PORT [distribution]=$DIST_PORT)
for ((round = 1; round <= ROUNDS; round++)); do
  for name in "${names[@]}"; do
    src="$WORK/src-$name-$round"
    dst="$WORK/pulled-$name-$round"
    make_layout "$src"
    ref="docker://127.0.0.1:${PORT[$name]}/bench/r$round-$RANDOM:v1"
    sync
    t0=$(now)
    skopeo copy --quiet --preserve-digests --dest-tls-verify=false "oci:$src:v1" "$ref"
    t1=$(now)
    skopeo copy --quiet --preserve-digests --src-tls-verify=false "$ref" "oci:$dst:v1"
    t2=$(now)
    cmp -s "$src/blobs/sha256/$(ls -S "$src/blobs/sha256" | head -1)" \
      "$dst/blobs/sha256/$(ls -S "$src/blobs/sha256" | head -1)" ||
      { echo "bench_registry: the layer pulled from $name differs" >&2; exit 1; }
    PUSH[$name]+="$(elapsed "$t0" "$t1") "
    PULL[$name]+="$(elapsed "$t1" "$t2") "
    rm -rf "$src" "$dst"
  done
done

peak_mib() { awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }
median_rate() { # seconds...
  python3 -c "import statistics, sys; s = statistics.median(map(float, sys.argv[2:])); \
print(f'{int(sys.argv[1]) / s:8.1f} MiB/s ({s:.2f} s)')" "$SIZE_MIB" "$@"
}

echo
echo "skopeo, one ${SIZE_MIB} MiB layer, median of $ROUNDS rounds (127.0.0.1, storage in $WORK)"
printf '%-30s %-24s %-24s %s\n' registry push pull "peak RSS"
row() { # label name pid
  # shellcheck disable=SC2086 # the lists of seconds are split on purpose
  printf '%-30s %-24s %-24s %s MiB\n' "$1" "$(median_rate ${PUSH[$2]})" \
    "$(median_rate ${PULL[$2]})" "$(peak_mib "$3")"
}
row "ecr-layer-upload" ours "$OURS_PID"
row "ecr-layer-upload, incremental" ours-incremental "$INCR_PID"
row "distribution" distribution "$DIST_PID"
