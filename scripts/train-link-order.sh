#!/usr/bin/env bash
# Rewrites ztunnel/link/hot-code.order (or hot-code.musl.order), the list of functions
# scripts/rustc-linker.sh puts first in ztunnel's code: runs the quick dedicated-pair benchmark
# with both ztunnels under callgrind (start-up, xDS-less local config, HBONE and passthrough
# traffic, 1,000 held tunnels) and keeps every ztunnel function that ran, the most instructions
# first. Run it as root after changes that move a lot of code (a new dependency version, a new
# toolchain): a stale order leaves more of the code mapped and fails the test command's layout
# check, it never breaks a build. Needs valgrind (apt install valgrind).
#
# Usage: scripts/train-link-order.sh            the glibc release build's order (hot-code.order)
#        scripts/train-link-order.sh --image    the images' static musl build's (hot-code.musl.order)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "the benchmark creates network namespaces: run it as root" >&2
  exit 1
fi
command -v valgrind >/dev/null || { echo "valgrind is missing: apt install valgrind" >&2; exit 1; }
case "${1:-}" in
  "" | --image) ;;
  *)
    echo "usage: scripts/train-link-order.sh [--image]" >&2
    exit 1
    ;;
esac
source scripts/target-dir.sh
# The benchmark, and the glibc ztunnel it profiles by default.
cargo build --release --locked -p amesh-ztunnel -p amesh-bench >&2
if [ "${1:-}" = --image ]; then
  # shellcheck source=scripts/musl-link.sh
  source scripts/musl-link.sh
  # As images.sh builds them: the order is matched by this build's exact symbol names.
  amesh_build_image_binaries image >&2
  binary="$CARGO_TARGET_DIR/x86_64-unknown-linux-musl/image/ztunnel"
  order=ztunnel/link/hot-code.musl.order
else
  binary="$CARGO_TARGET_DIR/release/ztunnel"
  order=ztunnel/link/hot-code.order
fi

work=$(mktemp -d /tmp/amesh-train.XXXXXX)
trap 'rm -rf "$work"' EXIT
# The profile is taken from a copy named `ztunnel`: link_order.py keeps that object's functions.
cp "$binary" "$work/ztunnel"
mkdir "$work/out"
# The bench ends each ztunnel with SIGKILL, so callgrind writes its counts as it goes.
cat >"$work/run" <<RUN
#!/bin/sh
exec valgrind -q --tool=callgrind --demangle=no --compress-strings=no --compress-pos=no \
  --dump-every-bb=5000000 --callgrind-out-file=$work/out/cg.%p $work/ztunnel "\$@"
RUN
chmod +x "$work/run"
AMESH_BENCH_ZTUNNEL="$work/run" "$CARGO_TARGET_DIR/release/amesh-bench" --layout pair --quick \
  --out "$work/bench.json" >"$work/bench.log"
python3 scripts/link_order.py train "$order" "$work"/out/cg.*
