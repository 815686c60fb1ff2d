#!/usr/bin/env bash
# The one demo command: set up the machine, build, bring up a two-node lab cluster with the
# bookinfo-like example in an ambient namespace, send traffic, print a summary, tear down.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
source scripts/target-dir.sh

cargo build --workspace --bins --locked
if [ "$(id -u)" -ne 0 ]; then
  echo "the lab creates network namespaces: run the demo as root" >&2
  exit 1
fi
RUST_LOG="${RUST_LOG:-warn}" "$CARGO_TARGET_DIR/debug/amesh-lab" demo examples/bookinfo --nodes 2
