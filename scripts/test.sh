#!/usr/bin/env bash
# The one test command: set up the machine, then format check, lints and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
# Keep build products outside the clone so that repeated runs (and CI on this machine) reuse them.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/amesh/target}"

echo "[test] cargo fmt --check"
cargo fmt --all --check
echo "[test] cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
# End-to-end tests run the workspace binaries (ztunnel, amesh-cni, amesh-lab); build them first.
echo "[test] cargo build --bins"
cargo build --workspace --bins --locked
echo "[test] cargo test"
cargo test --workspace --locked --no-fail-fast 2>&1 | tee /tmp/amesh-test.log
