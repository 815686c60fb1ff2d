#!/usr/bin/env bash
# The benchmark command: set up the machine, build the release binaries, run the lab benchmark.
# Arguments go to amesh-bench (`--quick`, `--reps N`, `--out FILE`, ...; `--help` lists them).
# `--layout pair` measures ztunnel alone instead: two namespaces with a dedicated-mode ztunnel
# each (HBONE and plain-TCP passthrough against direct, pinned and unpinned; `--workers N`).
# `AMESH_BENCH_ZTUNNEL=/path/to/ztunnel` runs the pair layout with another ztunnel build (e.g. a
# copy of the previous one, to compare two builds in alternating runs).
# `AMESH_BENCH=controller` runs the controller-at-scale benchmark instead, `AMESH_BENCH=waypoint`
# the waypoint one (amesh's waypoint against Envoy as a waypoint, HTTP/1.1 and HTTP/2).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "the benchmark lab creates network namespaces: run it as root" >&2
  exit 1
fi

# Setup and build talk on stderr: stdout is the table.
bash scripts/setup.sh >&2
source scripts/target-dir.sh

# Only what the chosen benchmark runs: each release binary is a whole-program (fat LTO) link of
# one to three minutes on two cores, most of a build. amesh-bench runs the lab's pod apps
# itself, so amesh-lab is not needed; amesh-controller only with `--control-plane controller`.
control_plane="${AMESH_LAB_CONTROL_PLANE:-file}"
layout=lab
prev=""
for a in "$@"; do
  case "$a" in
    --control-plane=*) control_plane="${a#*=}" ;;
    --layout=*) layout="${a#*=}" ;;
    *)
      [ "$prev" = "--control-plane" ] && control_plane="$a"
      [ "$prev" = "--layout" ] && layout="$a"
      ;;
  esac
  prev="$a"
done
bench_kind="${AMESH_BENCH:-lab}"
# The dedicated pair runs two ztunnels from local files: no CNI plugin, no controller.
if [ "$bench_kind" = lab ] && [ "$layout" = pair ]; then bench_kind=pair; fi
# `alone`: package:binary pairs built in a `cargo build` each, after the main one. Built with
# ztunnel, the controller's and the waypoint's features would be unified into the libraries
# ztunnel shares with them, and ztunnel's symbols would get other hashes than those its code
# layout was trained on (scripts/train-link-order.sh builds the same way).
alone=()
case "$bench_kind" in
  pair)
    bench=amesh-bench
    bins=(ztunnel amesh-bench)
    pkgs=(amesh-ztunnel amesh-bench)
    ;;
  lab)
    bench=amesh-bench
    bins=(ztunnel amesh-cni amesh-bench)
    pkgs=(amesh-ztunnel amesh-bench)
    if [ "$control_plane" = controller ]; then alone+=(amesh-controller:amesh-controller); fi
    ;;
  waypoint)
    bench=amesh-bench-waypoint
    bins=(ztunnel amesh-cni amesh-bench-waypoint)
    pkgs=(amesh-ztunnel amesh-bench)
    alone+=(amesh-waypoint:waypoint)
    if [ "$control_plane" = controller ]; then alone+=(amesh-controller:amesh-controller); fi
    ;;
  controller)
    bench=amesh-bench-controller
    bins=(amesh-controller amesh-bench-controller)
    pkgs=(amesh-controller amesh-bench)
    ;;
  *) echo "AMESH_BENCH must be lab, controller or waypoint, not ${AMESH_BENCH}" >&2; exit 2 ;;
esac
# The packages are named so that cargo resolves features for them alone: with the whole
# workspace selected, the controller's server feature (kube, the xDS server) would be built into
# the lab's copy of the controller library too.
echo "[bench] cargo build --release ${pkgs[*]/#/-p } ${bins[*]/#/--bin }" >&2
cargo build --release --locked "${pkgs[@]/#/-p=}" "${bins[@]/#/--bin=}"
for unit in "${alone[@]}"; do
  echo "[bench] cargo build --release -p ${unit%%:*} --bin ${unit#*:}" >&2
  cargo build --release --locked -p "${unit%%:*}" --bin "${unit#*:}"
done
exec "$CARGO_TARGET_DIR/release/$bench" "$@"
