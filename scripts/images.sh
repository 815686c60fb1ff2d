#!/usr/bin/env bash
# Builds amesh's container images from this checkout: amesh/controller, amesh/ztunnel (with
# amesh-cni) and amesh/waypoint, each an empty base (FROM scratch) with static musl binaries,
# built by buildah without a daemon and without pulling anything. The build files are
# deploy/images/<name>.Containerfile.
#
# Usage: scripts/images.sh            build, tag amesh/<name>:<version>, export OCI archives,
#                                     print the sizes
#        scripts/images.sh --check    the same, then check every image (see check_image)
#        scripts/images.sh --check-only   check the images already built
#
# AMESH_IMAGE_PROFILE picks the cargo profile of the binaries (default: image, see Cargo.toml).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[images] %s\n' "$*"; }
fail() {
  printf '[images] FAIL: %s\n' "$*" >&2
  exit 1
}

build=1
check=0
case "${1:-}" in
  "") ;;
  --check) check=1 ;;
  --check-only) build=0 check=1 ;;
  *) fail "unknown argument ${1} (usage: scripts/images.sh [--check | --check-only])" ;;
esac

TARGET=x86_64-unknown-linux-musl
PROFILE="${AMESH_IMAGE_PROFILE:-image}"
IMAGES=(controller ztunnel waypoint)

# buildah, musl-tools and the musl target come from setup; run it (idempotent) if one is missing.
if ! command -v buildah >/dev/null 2>&1 || ! command -v musl-gcc >/dev/null 2>&1 ||
  ! rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then
  log "buildah, musl-tools or the $TARGET target missing: running scripts/setup.sh"
  bash scripts/setup.sh
fi
# shellcheck source=scripts/target-dir.sh
source scripts/target-dir.sh

# The musl links go through the linker command with lld, for ztunnel's code layout.
# shellcheck source=scripts/musl-link.sh
source scripts/musl-link.sh

# vfs needs no kernel overlay support and no fuse: it works as root in any sandbox, at the cost
# of a full copy per layer (these images have one or two small layers). chroot isolation needs
# no OCI runtime for `buildah run`, and a FROM scratch + COPY build runs nothing at all.
BUILDAH=(buildah --storage-driver "${AMESH_IMAGE_STORAGE_DRIVER:-vfs}")

# The workspace's version, repository and license ([workspace.package]) label every image.
read -r VERSION SOURCE LICENSES < <(python3 -c '
import sys, tomllib
with open("Cargo.toml", "rb") as f:
    package = tomllib.load(f)["workspace"]["package"]
fields = [package.get(k) for k in ("version", "repository", "license")]
if not all(isinstance(v, str) and v and " " not in v for v in fields):
    sys.exit(f"Cargo.toml [workspace.package]: version, repository and license must be set, one word each (got {fields})")
print(*fields)
') || fail "cannot read the workspace version, repository and license from Cargo.toml"
[ -n "$VERSION" ] || fail "no workspace version in Cargo.toml"
OUT="$CARGO_TARGET_DIR/images"
BIN_DIR="$CARGO_TARGET_DIR/$TARGET/$PROFILE"

# The binaries each image carries.
binaries() {
  case "$1" in
    controller) echo amesh-controller ;;
    ztunnel) echo ztunnel amesh-cni ;;
    waypoint) echo waypoint ;;
  esac
}

# Copies each program named with its shared libraries and loader (as ldd resolves them, links
# followed) into the folder $1, at the same paths.
stage_dynamic() {
  local root="$1" prog lib
  shift
  for prog in "$@"; do
    [ -x "$prog" ] || fail "$prog not found (setup installs it)"
    install -D -m 0755 "$prog" "$root$prog"
    for lib in $(ldd "$prog" | grep -o '/[^ ]*'); do
      # 0755: the loader among them must be executable for the kernel to start the program.
      install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
    done
  done
}

build_images() {
  log "cargo build --profile $PROFILE --target $TARGET (static binaries)"
  local started=$SECONDS
  amesh_build_image_binaries "$PROFILE"
  log "binaries built in $((SECONDS - started)) s"

  # The commit's time stamps the images (their created date and file times), so the same
  # commit gives the same image IDs.
  local epoch
  epoch=$(git log -1 --format=%ct 2>/dev/null || echo 0)
  mkdir -p "$OUT"
  local name ctx bin
  for name in "${IMAGES[@]}"; do
    ctx="$OUT/context/$name"
    rm -rf "$ctx"
    mkdir -p "$ctx"
    for bin in $(binaries "$name"); do
      cp "$BIN_DIR/$bin" "$ctx/$bin"
    done
    case "$name" in
      controller)
        [ -s /etc/ssl/certs/ca-certificates.crt ] ||
          fail "/etc/ssl/certs/ca-certificates.crt missing (Debian package ca-certificates)"
        cp /etc/ssl/certs/ca-certificates.crt "$ctx/"
        ;;
      ztunnel) stage_dynamic "$ctx/nft-rootfs" /usr/sbin/nft /usr/bin/nsenter ;;
    esac
    local tag="amesh/$name:$VERSION"
    # A rebuild replaces the tag; the image it named would be left behind untagged.
    "${BUILDAH[@]}" rmi "$tag" >/dev/null 2>&1 || true
    log "building $tag"
    "${BUILDAH[@]}" build --quiet --isolation chroot --layers=false --timestamp "$epoch" \
      --build-arg VERSION="$VERSION" --build-arg SOURCE="$SOURCE" --build-arg LICENSES="$LICENSES" \
      -f "deploy/images/$name.Containerfile" -t "$tag" "$ctx" >/dev/null
    rm -f "$OUT/amesh-$name-$VERSION.oci.tar"
    "${BUILDAH[@]}" push --quiet "$tag" "oci-archive:$OUT/amesh-$name-$VERSION.oci.tar:$tag"
  done

  printf '\n%-28s %12s %16s\n' IMAGE SIZE "OCI ARCHIVE"
  for name in "${IMAGES[@]}"; do
    local tag="amesh/$name:$VERSION" size archive
    size=$("${BUILDAH[@]}" images --format '{{.Size}}' "$tag")
    archive=$(du -h "$OUT/amesh-$name-$VERSION.oci.tar" | cut -f1)
    printf '%-28s %12s %16s\n' "$tag" "$size" "$archive"
  done
  printf '(OCI archives in %s; load one into containerd with: ctr images import <archive>)\n\n' "$OUT"
}

# Whether the ELF file $1 is a static executable: no program interpreter (PT_INTERP) and no
# shared library needed (DT_NEEDED). Read from its headers, not by running it.
is_static() {
  readelf -lW "$1" 2>/dev/null | grep -q 'Elf file type is' || return 1
  ! readelf -lW "$1" | grep -qw INTERP && ! readelf -dW "$1" | grep -qw NEEDED
}

# Checks the image amesh/$1:$VERSION: its config (entrypoint, user, labels), that every binary
# of ours in it is static, and that its entrypoint runs: once as a container (`buildah run`, as
# the image's user), once chrooted into its mounted root file system.
check_image() {
  local name="$1" tag="amesh/$1:$VERSION" entry expect_user
  log "checking $tag"
  "${BUILDAH[@]}" inspect --type image "$tag" >/dev/null 2>&1 || fail "$tag: no such image (build it: scripts/images.sh)"
  case "$name" in
    ztunnel) expect_user="" ;;
    *) expect_user="1337:1337" ;;
  esac
  local first
  first=$(binaries "$name" | cut -d' ' -f1)
  entry="[\"/usr/local/bin/$first\"]"
  # The config, compared field by field with what deploy/images says it must be.
  "${BUILDAH[@]}" inspect --type image "$tag" |
    EXPECT_ENTRY="$entry" EXPECT_USER="$expect_user" TITLE="amesh-$name" VERSION="$VERSION" \
      SOURCE="$SOURCE" LICENSES="$LICENSES" TAG="$tag" python3 -c '
import json, os, sys
config = json.load(sys.stdin)["OCIv1"].get("config") or {}
env = os.environ
problems = []
def want(what, got, expected):
    if got != expected:
        problems.append(f"{what} is {got!r}, expected {expected!r}")
want("Entrypoint", config.get("Entrypoint"), json.loads(env["EXPECT_ENTRY"]))
want("Cmd", config.get("Cmd"), None)
want("User", config.get("User", ""), env["EXPECT_USER"])
labels = config.get("Labels") or {}
for key, value in [("title", env["TITLE"]), ("version", env["VERSION"]),
                   ("source", env["SOURCE"]), ("licenses", env["LICENSES"])]:
    want("label org.opencontainers.image." + key, labels.get("org.opencontainers.image." + key), value)
if problems:
    sys.exit(env["TAG"] + ": " + "; ".join(problems))
' || fail "$tag: wrong image config"

  # A fixed name: a check that failed half-way left its container, which this one replaces.
  local ctr="amesh-image-check-$name" mnt bin out
  "${BUILDAH[@]}" rm "$ctr" >/dev/null 2>&1 || true
  "${BUILDAH[@]}" from --quiet --pull-never --name "$ctr" "$tag" >/dev/null
  CONTAINERS+=("$ctr")
  mnt=$("${BUILDAH[@]}" mount "$ctr")
  for bin in $(binaries "$name"); do
    [ -f "$mnt/usr/local/bin/$bin" ] || fail "$tag: /usr/local/bin/$bin missing"
    is_static "$mnt/usr/local/bin/$bin" || fail "$tag: /usr/local/bin/$bin is not a static executable"
  done

  # The entrypoint's --version, run from the image as a container, then chrooted into its files.
  local expect="$first $VERSION"
  out=$("${BUILDAH[@]}" run --isolation chroot "$ctr" -- "/usr/local/bin/$first" --version 2>&1) ||
    fail "$tag: buildah run $first --version failed: $out"
  [[ "$out" == "$expect"* ]] || fail "$tag: $first --version printed '$out', expected '$expect...'"
  local as=0:0
  [ -z "$expect_user" ] || as="$expect_user"
  out=$(chroot --userspec="$as" "$mnt" "/usr/local/bin/$first" --version 2>&1) ||
    fail "$tag: chroot $first --version failed: $out"
  [[ "$out" == "$expect"* ]] || fail "$tag: $first --version (chroot) printed '$out', expected '$expect...'"
  log "  $out (as a container and from its files)"

  if [ "$name" = ztunnel ]; then
    # The CNI plugin answers the runtime's VERSION command; nsenter and nft run with the image's
    # own libraries, and nft loads a capture-like ruleset in a throwaway network namespace.
    out=$(CNI_COMMAND=VERSION chroot "$mnt" /usr/local/bin/amesh-cni </dev/null 2>&1) ||
      fail "$tag: amesh-cni VERSION failed: $out"
    [[ "$out" == *supportedVersions* ]] || fail "$tag: amesh-cni VERSION printed '$out'"
    out=$("${BUILDAH[@]}" run --isolation chroot "$ctr" -- nsenter --version 2>&1) ||
      fail "$tag: nsenter --version failed: $out"
    out=$("${BUILDAH[@]}" run --isolation chroot "$ctr" -- nft --version 2>&1) ||
      fail "$tag: nft --version failed: $out"
    out=$(unshare --net chroot "$mnt" /usr/sbin/nft -f - 2>&1 <<'EOF'
table ip amesh_image_check {
  chain nat_output {
    type nat hook output priority -100; policy accept;
    meta mark & 0xfff == 0x539 return
    oifname "lo" return
    meta l4proto tcp ip daddr != 127.0.0.1 redirect to :15001
  }
}
EOF
    ) || fail "$tag: nft could not load a ruleset: $out"
    log "  amesh-cni, nsenter and nft run from the image"
  fi
}

if [ "$build" = 1 ]; then
  build_images
fi
if [ "$check" = 1 ]; then
  # The working containers the checks make are removed (and unmounted) however they end.
  CONTAINERS=()
  remove_containers() {
    local c
    for c in "${CONTAINERS[@]}"; do
      "${BUILDAH[@]}" rm "$c" >/dev/null 2>&1 || true
    done
  }
  trap remove_containers EXIT
  for name in "${IMAGES[@]}"; do
    check_image "$name"
  done
  log "all images pass"
fi
