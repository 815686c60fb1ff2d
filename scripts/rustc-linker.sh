#!/usr/bin/env bash
# The linker command for x86_64-unknown-linux-gnu (.cargo/config.toml) and, in the image build,
# x86_64-unknown-linux-musl (scripts/images.sh). It is `cc`, called as rustc calls it, for
# every link but one: an optimised ztunnel (`*/deps/ztunnel-*` of any profile but `debug`,
# linked by lld) also gets lld's --symbol-ordering-file, which puts the functions that run in
# ztunnel (ztunnel/link/hot-code.order; hot-code.musl.order for the images' static build)
# together at the front of its code. That halves the code ztunnel keeps mapped;
# ARCHITECTURE.md, Performance, has the reasoning and the figures.
# Anything else about the link is untouched, and when the order cannot be applied the link
# goes on without it. `AMESH_LINK_CC` names another compiler driver than `cc`.
#
# The scripts run a copy of this file from a fixed path of the build cache (scripts/target-dir.sh
# says why) and name the clone in `AMESH_LINK_ROOT`; run from the clone, it finds it itself.
set -uo pipefail

cc="${AMESH_LINK_CC:-cc}"
root="${AMESH_LINK_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
out=""
lld=no
objects=()
prev=""
for a in "$@"; do
  [ "$prev" = "-o" ] && out="$a"
  case "$a" in
    -fuse-ld=lld) lld=yes ;;
    *.o) [ -f "$a" ] && objects+=("$a") ;;
  esac
  prev="$a"
done

case "$out" in
  */debug/deps/*) exec "$cc" "$@" ;;
  */deps/ztunnel-*) ;;
  *) exec "$cc" "$@" ;;
esac
# The images' static musl ztunnel (thin LTO, another libc) runs other functions under other
# names than the glibc release build: it has an order of its own.
case "$out" in
  */x86_64-unknown-linux-musl/*) order="$root/ztunnel/link/hot-code.musl.order" ;;
  *) order="$root/ztunnel/link/hot-code.order" ;;
esac
# The flag is lld's: with another linker (a user's `-C linker-flavor`, say) it would fail the link.
if [ "$lld" != yes ] || [ ! -f "$order" ] || [ "${#objects[@]}" -eq 0 ]; then
  exec "$cc" "$@"
fi

resolved="$out.symbol-order"
if python3 "$root/scripts/link_order.py" resolve "$order" "$resolved" "${objects[@]}" 2>"$out.symbol-order.log"; then
  exec "$cc" "$@" "-Wl,--symbol-ordering-file=$resolved" -Wl,--no-warn-symbol-ordering
fi
echo "scripts/rustc-linker.sh: the code order was not applied (see $out.symbol-order.log)" >&2
exec "$cc" "$@"
