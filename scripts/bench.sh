#!/usr/bin/env bash
# The benchmark command: set up the machine, build the release binaries, run the lab benchmark.
# Arguments go to amesh-bench (`--quick`, `--reps N`, `--out FILE`, ...; `--help` lists them).
# `AMESH_BENCH=controller` runs the controller-at-scale benchmark instead.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "the benchmark lab creates network namespaces: run it as root" >&2
  exit 1
fi

bash scripts/setup.sh
source scripts/target-dir.sh

echo "[bench] cargo build --release --bins"
cargo build --release --bins --locked
case "${AMESH_BENCH:-lab}" in
  lab) exec "$CARGO_TARGET_DIR/release/amesh-bench" "$@" ;;
  controller) exec "$CARGO_TARGET_DIR/release/amesh-bench-controller" "$@" ;;
  *) echo "AMESH_BENCH must be lab or controller, not ${AMESH_BENCH}" >&2; exit 2 ;;
esac
