#!/usr/bin/env bash
# Builds and runs the cargo-fuzz targets in fuzz/ (nightly toolchain): each for
# SECONDS_PER_TARGET seconds (default 60), all of them or those named.
#
#   bash scripts/fuzz.sh [SECONDS_PER_TARGET] [target...]
#
# Prints one summary line per target (runs, corpus size, crashes) and exits non-zero when any
# target crashed; the crashing input is left under $CARGO_TARGET_DIR/fuzz/artifacts/<target>/
# (reproduce with `cargo +nightly fuzz run <target> <file>` from the repository root). New
# corpus entries go to $CARGO_TARGET_DIR/fuzz/corpus/<target>/, not into the checked-in seeds
# (fuzz/corpus/<target>/), so a run never dirties the clone.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
case "$seconds" in
  '' | *[!0-9]*) echo "usage: $0 [SECONDS_PER_TARGET] [target...]" >&2; exit 2 ;;
esac
shift || true

source scripts/target-dir.sh
# The fuzz build (nightly, sanitizers, its own lock file) in its own directory, so it never
# invalidates the main build's cache.
fuzz_out="$CARGO_TARGET_DIR/fuzz"
export CARGO_TARGET_DIR="$fuzz_out/target"
# The nightly toolchain has no bpf-linker built for its LLVM; the targets do not need the
# eBPF capture program (see ztunnel/build.rs).
export AMESH_SKIP_EBPF=1

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "[fuzz] cargo-fuzz is missing: run scripts/setup.sh" >&2
  exit 1
fi

if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo +nightly fuzz list --fuzz-dir fuzz)
fi

echo "[fuzz] building ${targets[*]}"
for t in "${targets[@]}"; do
  cargo +nightly fuzz build --fuzz-dir fuzz "$t"
done

failed=()
for t in "${targets[@]}"; do
  corpus="$fuzz_out/corpus/$t"
  artifacts="$fuzz_out/artifacts/$t"
  log="$fuzz_out/logs/$t.log"
  mkdir -p "$corpus" "$artifacts" "$(dirname "$log")"
  # Crashes of an earlier run must not count against this one.
  find "$artifacts" -type f -delete
  seeds=()
  [ -d "fuzz/corpus/$t" ] && seeds=("fuzz/corpus/$t")
  status=0
  # libFuzzer writes new inputs to the first corpus directory and only reads the others.
  cargo +nightly fuzz run --fuzz-dir fuzz "$t" "$corpus" "${seeds[@]}" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -artifact_prefix="$artifacts/" \
    -print_final_stats=1 >"$log" 2>&1 || status=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$log" | tail -n1)
  crashes=$(find "$artifacts" -type f | wc -l)
  size=$(find "$corpus" -type f | wc -l)
  echo "[fuzz] $t: ${runs:-?} runs in ${seconds}s, corpus $size, crashes $crashes (exit $status, log $log)"
  if [ "$status" -ne 0 ] || [ "$crashes" -ne 0 ]; then
    failed+=("$t")
    tail -n 30 "$log" >&2
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "[fuzz] FAILED: ${failed[*]} (inputs under $fuzz_out/artifacts/)" >&2
  exit 1
fi
echo "[fuzz] all ${#targets[@]} targets ran ${seconds}s each without a crash"
