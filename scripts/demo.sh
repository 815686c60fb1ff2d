#!/usr/bin/env bash
# The one demo command: set up the machine, build, and show amesh at work.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/amesh/target}"

cargo run --locked -p amesh-mesh --example hbone_tunnel
