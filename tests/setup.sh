#!/usr/bin/env bash
# Installs what the build and the tests need, and only what is missing:
#   protoc with its well-known types (Debian protobuf-compiler and
#   libprotobuf-dev: etcd-client compiles etcd's protos at build time), etcd
#   (Debian etcd-server, for the cluster tests), iptables (the partition
#   tests cut loopback links with it), kcat (Debian), Python
#   packages pinned in tests/requirements.txt (clients,
#   pytest, the moto S3 server), s3s-fs (crates.io, built into the tools
#   cache), Node packages locked in tests/e2e/js/package-lock.json.
# Idempotent; when everything is present it finishes in a few seconds.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python3}"
JS_DIR="$HERE/e2e/js"

log() { printf 'setup: %s\n' "$*" >&2; }

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then
    log "apt-get update"
    $SUDO apt-get update -qq
    apt_updated=1
  fi
  log "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@"
}

# --- Debian packages --------------------------------------------------------
missing=()
command -v kcat >/dev/null 2>&1 || missing+=(kcat)
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
[ -f /usr/include/google/protobuf/descriptor.proto ] || missing+=(libprotobuf-dev)
command -v iptables >/dev/null 2>&1 || missing+=(iptables)
if [ ${#missing[@]} -gt 0 ]; then
  apt_install "${missing[@]}"
fi
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  apt_install nodejs npm
fi

# --- Python -------------------------------------------------------------------
# Every line of requirements.txt is NAME==VERSION; compare with what is installed.
if ! "$PYTHON" - "$HERE/requirements.txt" <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, version

missing = []
for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    name, _, wanted = line.partition("==")
    name = name.split("[", 1)[0]
    try:
        have = version(name)
    except PackageNotFoundError:
        have = None
    if have != wanted:
        missing.append(f"{name} (have {have}, want {wanted})")
if missing:
    print("setup: python packages to install: " + ", ".join(missing), file=sys.stderr)
    sys.exit(1)
PY
then
  "$PYTHON" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore -r "$HERE/requirements.txt"
fi

# --- s3s-fs: the second S3-compatible test server (checks signatures) ---------
# Built once with cargo into the tools cache; its build directory is removed
# afterwards.
TOOLS_DIR="${STRATA_TOOLS_DIR:-$HOME/.cache/strata/tools}"
S3S_FS_VERSION=0.14.1
S3S_FS="$TOOLS_DIR/s3s-fs-$S3S_FS_VERSION/bin/s3s-fs"
if [ ! -x "$S3S_FS" ]; then
  log "cargo install s3s-fs $S3S_FS_VERSION (a few minutes, once)"
  build_dir="$(mktemp -d)"
  CARGO_TARGET_DIR="$build_dir" cargo install s3s-fs --version "$S3S_FS_VERSION" --locked \
    --features binary --root "$TOOLS_DIR/s3s-fs-$S3S_FS_VERSION" --quiet
  rm -rf "$build_dir"
fi

# --- Node ---------------------------------------------------------------------
# node_modules is (re)installed from the lock file whenever the lock changes.
lock_hash="$(sha256sum "$JS_DIR/package-lock.json" | cut -d' ' -f1)"
stamp="$JS_DIR/node_modules/.strata-lock-sha256"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$lock_hash" ]; then
  log "npm ci in $JS_DIR"
  (cd "$JS_DIR" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$lock_hash" > "$stamp"
fi

log "ok"
