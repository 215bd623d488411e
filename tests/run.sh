#!/usr/bin/env bash
# The whole test suite: install test tools, format and lint checks, build,
# offline Helm chart validation (tests/helm/check.sh), Rust tests, end-to-end
# tests with real Kafka clients and S3-compatible servers against the built
# broker. Extra arguments go to pytest (e.g. `tests/run.sh -k kcat`).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/strata/target}"

bash tests/setup.sh

echo "== format and lints"
cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets -- -D warnings

echo "== cargo build"
cargo build --locked -p strata
export STRATA_BIN="${STRATA_BIN:-$CARGO_TARGET_DIR/debug/strata}"

echo "== helm chart (offline validation, rendered config checked by the binary)"
bash tests/helm/check.sh

echo "== rust tests (the object tier's suite also against moto and s3s-fs, the metadata store's against etcd)"
S3_RUN="$(mktemp -d)"
free_port() { "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
MOTO_PORT="$(free_port)"
S3S_PORT="$(free_port)"
ETCD_PORT="$(free_port)"
ETCD_PEER_PORT="$(free_port)"
moto_server -H 127.0.0.1 -p "$MOTO_PORT" >"$S3_RUN/moto.log" 2>&1 &
MOTO_PID=$!
mkdir -p "$S3_RUN/s3s"
"${STRATA_TOOLS_DIR:-$HOME/.cache/strata/tools}/s3s-fs-0.14.1/bin/s3s-fs" --host 127.0.0.1 --port "$S3S_PORT" \
  --access-key strata-test --secret-key strata-test-secret "$S3_RUN/s3s" >"$S3_RUN/s3s.log" 2>&1 &
S3S_PID=$!
etcd --data-dir "$S3_RUN/etcd" --name default \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "default=http://127.0.0.1:$ETCD_PEER_PORT" >"$S3_RUN/etcd.log" 2>&1 &
ETCD_PID=$!
trap 'kill $MOTO_PID $S3S_PID $ETCD_PID 2>/dev/null || true; rm -rf "$S3_RUN"' EXIT
for port in "$MOTO_PORT" "$S3S_PORT" "$ETCD_PORT"; do
  for _ in $(seq 100); do
    (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
  done
done
S3_ENV=(
  STRATA_TEST_S3="moto=http://127.0.0.1:$MOTO_PORT;s3s-fs=http://127.0.0.1:$S3S_PORT"
  AWS_ACCESS_KEY_ID=strata-test AWS_SECRET_ACCESS_KEY=strata-test-secret AWS_REGION=us-east-1
  STRATA_TEST_ETCD="http://127.0.0.1:$ETCD_PORT"
)
if cargo nextest --version >/dev/null 2>&1; then
  env "${S3_ENV[@]}" cargo nextest run --workspace --locked --no-tests=warn
else
  env "${S3_ENV[@]}" cargo test --workspace --locked
fi
kill "$MOTO_PID" "$S3S_PID" "$ETCD_PID" 2>/dev/null || true

echo "== end-to-end tests"
"$PYTHON" -m pytest tests/e2e -q --durations=0 "$@"
