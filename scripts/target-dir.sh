# Sourced by test.sh, demo.sh and bench.sh: the shared build directory outside the clone.
#
# Cargo does not rebuild a workspace crate when the same sources move to another path, so a
# cache last filled from another clone would hand tests and tools that path (env!
# ("CARGO_MANIFEST_DIR"): golden files, deploy manifests, lab fixtures). When the clone using
# the cache changes, only the workspace's own crates are cleaned; dependencies stay cached.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/amesh/target}"
mkdir -p "$CARGO_TARGET_DIR"
amesh_stamp="$CARGO_TARGET_DIR/.amesh-checkout"
# The clone's root, wherever inside it this is sourced from (a subfolder is the same clone).
amesh_root=$(git rev-parse --show-toplevel 2>/dev/null || pwd)
if [ -f "$amesh_stamp" ] && [ "$(cat "$amesh_stamp")" != "$amesh_root" ]; then
  echo "[build] $CARGO_TARGET_DIR was last used by $(cat "$amesh_stamp"); rebuilding the workspace crates for $amesh_root" >&2
  amesh_members=$(cargo metadata --no-deps --format-version 1 --locked |
    python3 -c 'import json, sys; print(" ".join("-p " + p["name"] for p in json.load(sys.stdin)["packages"]))')
  # shellcheck disable=SC2086 # one word per flag
  cargo clean $amesh_members
  # shellcheck disable=SC2086
  cargo clean --release $amesh_members
fi
echo "$amesh_root" >"$amesh_stamp"
