#!/usr/bin/env bash
# The whole test suite: install test tools, offline Helm chart validation
# (tests/helm/check.sh), build, Rust tests, end-to-end tests with real Kafka
# clients against the built broker. Extra arguments go to pytest
# (e.g. `tests/run.sh -k kcat`).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/strata/target}"

bash tests/setup.sh

echo "== helm chart (offline validation)"
bash tests/helm/check.sh

echo "== cargo build"
cargo build --locked -p strata

echo "== rust tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-tests=warn
else
  cargo test --workspace --locked
fi

echo "== end-to-end tests"
export STRATA_BIN="${STRATA_BIN:-$CARGO_TARGET_DIR/debug/strata}"
"$PYTHON" -m pytest tests/e2e -q --durations=0 "$@"
