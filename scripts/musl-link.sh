# Sourced after scripts/target-dir.sh by images.sh and train-link-order.sh: how the images'
# static musl binaries are built and linked. ztunnel's code is laid out by use, as in the glibc
# release build (ARCHITECTURE.md, Performance, "Code layout"), but the musl target links with
# `cc` and GNU ld, which cannot order symbols. So its links go through the same linker command,
# with rustc's own lld (the gcc-ld shim of the host toolchain, what rustc uses on
# x86_64-unknown-linux-gnu).
amesh_gcc_ld="$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin/gcc-ld"
if [ ! -x "$amesh_gcc_ld/ld.lld" ]; then
  echo "$amesh_gcc_ld/ld.lld missing: the toolchain's lld links the static musl binaries" >&2
  exit 1
fi
export CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_LINKER="${CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_LINKER:-$amesh_linker}"
export CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_RUSTFLAGS="${CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_RUSTFLAGS:--C link-arg=-fuse-ld=lld -C link-arg=-B$amesh_gcc_ld}"

# The images' binaries, built in one `cargo build`. The set of packages is part of the build:
# it decides feature unification, hence the symbol hashes ztunnel's musl order is matched by,
# so images.sh and train-link-order.sh both build through this. $1 is the cargo profile.
amesh_build_image_binaries() {
  cargo build --locked --profile "$1" --target x86_64-unknown-linux-musl \
    -p amesh-controller -p amesh-ztunnel -p amesh-waypoint --bins
}
