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

# The linker command (scripts/rustc-linker.sh; ARCHITECTURE.md, Performance, "Code layout").
# .cargo/config.toml names it inside the clone, and cargo fingerprints every crate with the
# linker's path: each new clone path would rebuild every dependency (CI's fresh clone took half
# as long again). So the scripts link through a copy at a fixed path of the cache, the same for
# every clone, and tell it this clone's root in AMESH_LINK_ROOT, which cargo does not track.
# The copy is replaced only when the script changed, and by a rename, so a link in progress
# never reads half a file.
amesh_linker="$CARGO_TARGET_DIR/.amesh-linker/rustc-linker.sh"
if ! cmp -s "$amesh_root/scripts/rustc-linker.sh" "$amesh_linker"; then
  mkdir -p "$(dirname "$amesh_linker")"
  cp "$amesh_root/scripts/rustc-linker.sh" "$amesh_linker.$$"
  chmod +x "$amesh_linker.$$"
  mv -f "$amesh_linker.$$" "$amesh_linker"
fi
export CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER="${CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER:-$amesh_linker}"
export AMESH_LINK_ROOT="$amesh_root"
