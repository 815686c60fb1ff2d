#!/usr/bin/env bash
# Rewrites ztunnel/link/hot-code.order (or hot-code.musl.order), the list of functions
# scripts/rustc-linker.sh puts first in ztunnel's code: runs two quick benchmarks with every
# ztunnel under callgrind and keeps every ztunnel function that ran, grouped by the workloads it
# ran in (those of both first; `link_order.py train`), the most instructions first in a group.
# The dedicated pair: start-up from a local config, HBONE and passthrough traffic, 1,000 held
# tunnels. The lab: a node's ztunnel as it runs on a node, fed and certified by amesh-controller
# over xDS, its pods added by the CNI plugin over zds and captured with eBPF in one lab and nft in
# the other. Run it as root after changes that move a lot of code (a new dependency version, a new
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
  bins="$CARGO_TARGET_DIR/x86_64-unknown-linux-musl/image"
  order=ztunnel/link/hot-code.musl.order
else
  # The lab's controller, built on its own: in the same `cargo build` its features would change
  # the ztunnel's symbol hashes, which the order is matched by.
  cargo build --release --locked -p amesh-controller --bin amesh-controller >&2
  bins="$CARGO_TARGET_DIR/release"
  order=ztunnel/link/hot-code.order
fi
binary="$bins/ztunnel"

work=$(mktemp -d /tmp/amesh-train.XXXXXX)
trap 'rm -rf "$work"' EXIT
# The profile is taken from a copy named `ztunnel`: link_order.py keeps that object's functions.
cp "$binary" "$work/ztunnel"
# The bench ends each ztunnel with SIGKILL, so callgrind writes its counts as it goes. One
# wrapper per workload, each writing to its own folder: link_order.py groups the functions by
# the workloads they ran in.
wrapper() {
  mkdir -p "$work/out/$1"
  cat >"$work/run-$1" <<RUN
#!/bin/sh
exec valgrind -q --tool=callgrind --demangle=no --compress-strings=no --compress-pos=no \
  --dump-every-bb=5000000 --callgrind-out-file=$work/out/$1/cg.%p $work/ztunnel "\$@"
RUN
  chmod +x "$work/run-$1"
}
wrapper pair
wrapper lab
echo "[train] the dedicated pair under callgrind" >&2
AMESH_BENCH_ZTUNNEL="$work/run-pair" "$CARGO_TARGET_DIR/release/amesh-bench" --layout pair --quick \
  --out "$work/pair.json" >"$work/pair.log"
# The lab runs the binaries beside amesh-bench: the profiled ztunnel is the wrapper, the CNI
# plugin and the controller those of the same build.
mkdir "$work/bin"
cp "$CARGO_TARGET_DIR/release/amesh-bench" "$bins/amesh-cni" "$bins/amesh-controller" "$work/bin/"
cp "$work/run-lab" "$work/bin/ztunnel"
echo "[train] the lab (xDS, zds, eBPF and nft capture) under callgrind" >&2
"$work/bin/amesh-bench" --layout lab --quick --control-plane controller --capture-mode ebpf \
  --compare-capture nft --out "$work/lab.json" >"$work/lab.log"
python3 scripts/link_order.py train "$order" "$work/out/pair" "$work/out/lab"
