#!/usr/bin/env bash
# Deployment and Lambda tooling in one Python venv outside the work tree:
#   ${TOOLS_DIR:-$HOME/.cache/ecr-layer-upload}/venv-tools
#
#   scripts/tools.sh install   create the venv and install the pinned tools (once; quiet when done)
#   scripts/tools.sh path      print the venv's bin directory (for PATH="$(scripts/tools.sh path):$PATH")
#   scripts/tools.sh node-path print the node_modules directory of the JavaScript SDK (for NODE_PATH)
#   scripts/tools.sh system    install the Debian packages the tests use (skopeo, podman, docker.io,
#                              containerd; needs root or sudo)
#
# `install` also installs the JavaScript SDK's ECR client (NODE_PACKAGES, for tests/clients/js) with
# npm into ${TOOLS_DIR}/node-ecr, once; it needs node (>= 18) and npm on PATH.
#
# Needs only python3 (>= 3.10) with its venv module and pip. The pins below resolve together:
# aws-sam-cli 1.170.0 requires boto3==1.43.108 and cfn-lint>=1.52,<1.59, and awscli 1.46.3 requires
# botocore>=1.43.108,<1.44. Change them together.
set -euo pipefail

TOOLS_DIR="${TOOLS_DIR:-$HOME/.cache/ecr-layer-upload}"
VENV="$TOOLS_DIR/venv-tools"
STAMP="$VENV/.installed"
PYTHON="${PYTHON:-python3}"

PACKAGES=(
  "awscli==1.46.3"
  "boto3==1.43.108"
  "cargo-lambda==1.9.2"
  "aws-sam-cli==1.170.0"
  "cfn-lint==1.58.0"
)
NODE_DIR="$TOOLS_DIR/node-ecr"
NODE_STAMP="$NODE_DIR/.installed"
NODE_PACKAGES=(
  "@aws-sdk/client-ecr@3.1169.0"
)
# Commands that must exist in the venv for an install to count as complete.
COMMANDS=(aws cargo-lambda sam cfn-lint)

usage() {
  echo "usage: $0 {install|system|path|node-path}" >&2
  exit 2
}

installed() {
  [[ -f "$STAMP" && "$(cat "$STAMP")" == "${PACKAGES[*]}" ]] || return 1
  local c
  for c in "${COMMANDS[@]}"; do
    [[ -x "$VENV/bin/$c" ]] || return 1
  done
}

node_installed() {
  [[ -f "$NODE_STAMP" && "$(cat "$NODE_STAMP")" == "${NODE_PACKAGES[*]}" ]] &&
    [[ -d "$NODE_DIR/node_modules/@aws-sdk/client-ecr" ]]
}

install_node() {
  node_installed && return 0
  command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || {
    echo "tools.sh: node and npm are needed for the JavaScript SDK's tests (tests/clients/js)" >&2
    exit 1
  }
  mkdir -p "$TOOLS_DIR"
  if command -v flock >/dev/null 2>&1; then
    exec 8>"$TOOLS_DIR/.node-ecr.lock"
    flock 8
    node_installed && return 0
  fi
  echo "tools.sh: installing ${NODE_PACKAGES[*]} into $NODE_DIR (once)" >&2
  rm -rf "$NODE_DIR"
  mkdir -p "$NODE_DIR"
  local log="$TOOLS_DIR/node-ecr-install.log"
  if ! npm install --prefix "$NODE_DIR" --no-audit --no-fund --no-save --loglevel=error \
      "${NODE_PACKAGES[@]}" >"$log" 2>&1; then
    cat "$log" >&2
    echo "tools.sh: npm install failed (log: $log)" >&2
    exit 1
  fi
  printf '%s' "${NODE_PACKAGES[*]}" >"$NODE_STAMP"
}

install() {
  install_venv
  install_node
}

install_venv() {
  installed && return 0
  mkdir -p "$TOOLS_DIR"
  # One installer at a time (parallel make jobs may all ask for the tools).
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$TOOLS_DIR/.venv-tools.lock"
    flock 9
    installed && return 0
  fi

  "$PYTHON" - <<'EOF' || { echo "tools.sh: needs Python >= 3.10 as '${PYTHON}'" >&2; exit 1; }
import sys
sys.exit(0 if sys.version_info >= (3, 10) else 1)
EOF

  echo "tools.sh: installing ${PACKAGES[*]} into $VENV (a few minutes, once)" >&2
  local start=$SECONDS
  # A venv cannot be moved, so a half-finished one (no stamp) is removed and built again in place.
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  local log="$TOOLS_DIR/venv-tools-install.log"
  if ! "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input --quiet \
      "${PACKAGES[@]}" >"$log" 2>&1; then
    cat "$log" >&2
    echo "tools.sh: pip install failed (log: $log)" >&2
    exit 1
  fi
  local c
  for c in "${COMMANDS[@]}"; do
    [[ -x "$VENV/bin/$c" ]] || { echo "tools.sh: $c missing from $VENV/bin after install" >&2; exit 1; }
  done
  printf '%s' "${PACKAGES[*]}" >"$STAMP"
  echo "tools.sh: installed in $((SECONDS - start)) s" >&2
}

# skopeo writes the `docker save` and OCI archives that tests/e2e/push.rs pushes: archives from a real
# producer, not only ones the tests build. skopeo and podman are the registry clients of
# tests/e2e/oci_clients.rs, tests/e2e/oci_podman.rs and tests/lambda/oci_pull.py (podman rootful,
# vfs storage: it pushes and pulls, it runs no container). docker.io (the docker CLI and dockerd)
# and containerd (with ctr) are those of tests/e2e/oci_docker.rs and tests/lambda/oci_pull.py,
# which start daemons of their own (vfs storage, no iptables, no bridge) and never the machine's
# services; they use Debian's paths (/usr/bin/docker, /usr/sbin/dockerd, /usr/bin/containerd,
# /usr/bin/ctr), whatever other docker client PATH finds first.
#
# Each package with what shows it is installed: a command on PATH, or Debian's path of it (a docker
# client installed elsewhere, without dockerd, does not count).
SYSTEM_PACKAGES=(
  skopeo=skopeo
  podman=podman
  docker.io=/usr/sbin/dockerd
  containerd=/usr/bin/ctr
)

system() {
  local missing=() entry p probe
  for entry in "${SYSTEM_PACKAGES[@]}"; do
    p="${entry%%=*}"
    probe="${entry#*=}"
    if [[ "$probe" == /* ]]; then
      [[ -x "$probe" ]] || missing+=("$p")
    else
      command -v "$probe" >/dev/null 2>&1 || missing+=("$p")
    fi
  done
  [[ ${#missing[@]} == 0 ]] && return 0
  local sudo=()
  if [[ "$(id -u)" != 0 ]]; then
    command -v sudo >/dev/null 2>&1 || {
      echo "tools.sh: installing ${missing[*]} needs root or sudo" >&2
      exit 1
    }
    sudo=(sudo)
  fi
  echo "tools.sh: installing ${missing[*]} with apt-get (once)" >&2
  mkdir -p "$TOOLS_DIR"
  local log="$TOOLS_DIR/apt-install.log"
  if ! { "${sudo[@]}" apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq \
        --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "tools.sh: apt-get install ${missing[*]} failed (log: $log)" >&2
    exit 1
  fi
}

case "${1:-}" in
  install) install ;;
  system) system ;;
  path) echo "$VENV/bin" ;;
  node-path) echo "$NODE_DIR/node_modules" ;;
  *) usage ;;
esac
