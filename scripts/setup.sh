#!/usr/bin/env bash
# Installs what building and testing amesh needs on a fresh Debian 12 machine. Idempotent: every
# step checks before it installs, so running it on every test or demo run costs a few seconds.
set -euo pipefail

log() { printf '[setup] %s\n' "$*"; }

# Debian packages. iproute2 and nftables carry the lab's network namespaces and capture rules;
# pkg-config and a C compiler build the TLS library (aws-lc) that rustls uses; nsenter
# (util-linux) runs nft in pod namespaces; tcpdump checks in tests that the wire carries TLS.
APT_PACKAGES=(build-essential pkg-config iproute2 nftables procps util-linux tcpdump)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  log "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
else
  log "Debian packages present"
fi

# Rust toolchain pieces: formatter and linter are part of the test command.
if ! command -v cargo >/dev/null 2>&1; then
  echo "[setup] cargo not found: install Rust with rustup first" >&2
  exit 1
fi
for c in rustfmt clippy; do
  if ! rustup component list --installed 2>/dev/null | grep -q "^$c"; then
    log "adding rustup component $c"
    rustup component add "$c"
  fi
done
log "toolchain: $(rustc --version)"
