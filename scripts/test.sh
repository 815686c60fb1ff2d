#!/usr/bin/env bash
# The one test command: set up the machine, then format check, lints and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
# Keep build products outside the clone so that repeated runs (and CI on this machine) reuse them.
source scripts/target-dir.sh
# Incremental state only helps an edit-compile loop; for a test run from a fresh clone it is
# tens of GB of cache that is never reused.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

echo "[test] cargo fmt --check"
cargo fmt --all --check
echo "[test] cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
# Licenses, banned crates and sources of the dependency tree (deny.toml). Not advisories: the
# RustSec database is cloned from github.com, which this machine cannot reach.
echo "[test] cargo deny"
cargo deny check --hide-inclusion-graph licenses bans sources
echo "[test] cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked
# End-to-end tests run the workspace binaries (ztunnel, amesh-cni, amesh-lab); build them first.
echo "[test] cargo build --bins"
cargo build --workspace --bins --locked
echo "[test] cargo test"
cargo test --workspace --locked --no-fail-fast 2>&1 | tee /tmp/amesh-test.log
# The same end-to-end scenarios with ztunnels fed from a local config file instead of the
# controller (Istio ztunnel's LOCAL_XDS_PATH mode).
echo "[test] end-to-end scenarios with the local-file control plane"
AMESH_LAB_CONTROL_PLANE=file cargo test -p amesh-e2e --locked 2>&1 | tee -a /tmp/amesh-test.log
# Both runs above capture with eBPF (ztunnel's default where the kernel allows: sk_lookup +
# policy routing, no netfilter in the pods); once more with Istio's nft rules.
echo "[test] end-to-end scenarios with CAPTURE_MODE=nft"
CAPTURE_MODE=nft cargo test -p amesh-e2e --locked 2>&1 | tee -a /tmp/amesh-test.log
# The container images: static musl binaries on empty bases, built with buildah, then each
# image's config, static binaries and `--version` (run as a container) checked.
echo "[test] container images (scripts/images.sh --check)"
bash scripts/images.sh --check
# Fuzz smoke: every cargo-fuzz target (fuzz/) built and run for 10 s; the long runs are
# `bash scripts/fuzz.sh 600`.
echo "[test] fuzz smoke (scripts/fuzz.sh 10)"
bash scripts/fuzz.sh 10
# Benchmark smoke: the benchmark command itself in quick mode (release build, direct vs mesh
# with both capture modes, one repetition). It also leaves the release binaries built, so a
# full `bash scripts/bench.sh` afterwards only runs.
echo "[test] benchmark smoke (scripts/bench.sh --quick)"
bash scripts/bench.sh --quick --out "$CARGO_TARGET_DIR/bench/quick.json"
# The same in the dedicated-pair layout (two namespaces, a dedicated-mode ztunnel each; about
# 40 s of measuring with the binaries above already built).
echo "[test] benchmark smoke, dedicated pair (scripts/bench.sh --layout pair --quick)"
bash scripts/bench.sh --layout pair --quick --out "$CARGO_TARGET_DIR/bench/pair-quick.json"
# The release ztunnel's code, and the image's, is laid out by its hot-code order
# (ARCHITECTURE.md, Performance): fails when the linker command did not apply it, or when the
# order no longer matches the code.
echo "[test] ztunnel's code layout (scripts/link_order.py check)"
python3 scripts/link_order.py check "$CARGO_TARGET_DIR/release/ztunnel" ztunnel/link/hot-code.order
python3 scripts/link_order.py check "$CARGO_TARGET_DIR/x86_64-unknown-linux-musl/image/ztunnel" ztunnel/link/hot-code.musl.order
