//! Builds the kernel-side capture programs (`../ebpf`, crate `amesh-ebpf`) for
//! `bpfel-unknown-none` and leaves the objects in `OUT_DIR` for `capture/ebpf.rs`
//! (`amesh-capture`) and `capture/sockmap.rs` (`amesh-hops`) to embed.
//!
//! The target is tier 3, so the inner build compiles `core` from source (rust-src) with
//! `RUSTC_BOOTSTRAP=1` on the stable toolchain, and links with bpf-linker, which must use the
//! very LLVM of that toolchain. `scripts/setup.sh` installs both; bpf-linker goes under
//! `~/.cache/amesh/bpf-linker-<version>-<libLLVM file name>`, which is where this script looks
//! first, so a plain `cargo build` works without touching PATH.

use std::env;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

const BPF_LINKER_VERSION: &str = "0.13.0";
const SETUP_HINT: &str = "run scripts/setup.sh once: it installs rust-src and builds bpf-linker against this toolchain's LLVM";

/// Set (to anything) to build without the eBPF program: `OUT_DIR/amesh-capture` is left empty,
/// so `CAPTURE_MODE=ebpf` fails at load with a clear error. The fuzz targets (`fuzz/`, built on
/// the nightly toolchain, whose LLVM has no bpf-linker here) need ztunnel's parsers, not the
/// capture program.
const SKIP_EBPF_ENV: &str = "AMESH_SKIP_EBPF";

fn main() {
    // Read at link time by the linker command (scripts/rustc-linker.sh), which cargo does not
    // track: a new code order must relink ztunnel.
    for input in [
        "link/hot-code.order",
        "link/hot-code.musl.order",
        "../scripts/rustc-linker.sh",
        "../scripts/link_order.py",
    ] {
        println!("cargo:rerun-if-changed={input}");
    }
    println!("cargo:rerun-if-env-changed={SKIP_EBPF_ENV}");
    if env::var_os(SKIP_EBPF_ENV).is_some() {
        if let Err(e) = write_empty_object() {
            panic!("writing the empty eBPF object: {e}");
        }
        return;
    }
    if let Err(e) = build() {
        // A panic is how a build script fails with a message cargo shows in full.
        panic!("building the eBPF capture program: {e}");
    }
}

fn build() -> Result<(), String> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    let workspace = manifest
        .parent()
        .ok_or("ztunnel's manifest has no parent directory")?;
    let ebpf_dir = workspace.join("ebpf");
    let common_dir = workspace.join("ebpf-common");
    println!("cargo:rerun-if-changed={}", common_dir.display());
    println!("cargo:rerun-if-changed=build.rs");

    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let sysroot = output(Command::new(&rustc).args(["--print", "sysroot"]))?;
    let sysroot = PathBuf::from(sysroot.trim());
    let core_src = sysroot.join("lib/rustlib/src/rust/library/core");
    if !core_src.is_dir() {
        return Err(format!(
            "the rust-src component is missing ({} does not exist); {SETUP_HINT}",
            core_src.display()
        ));
    }
    let linker_dir = find_bpf_linker(&sysroot)?;
    let mut path = OsString::from(linker_dir.as_os_str());
    if let Some(old) = env::var_os("PATH") {
        path.push(":");
        path.push(old);
    }
    // The inner cargo (and the rustc it runs) inherit this process's environment: bpf-linker
    // on PATH, and unstable flags (`-Z build-std`) allowed on the stable toolchain.
    env::set_var("PATH", path);
    env::set_var("RUSTC_BOOTSTRAP", "1");

    let toolchain = env::var("RUSTUP_TOOLCHAIN").unwrap_or_else(|_| "stable".into());
    let ebpf_dir_str = ebpf_dir.to_str().ok_or("the workspace path is not UTF-8")?;
    let package = aya_build::Package {
        name: "amesh-ebpf",
        root_dir: ebpf_dir_str,
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::Custom(&toolchain))
        .map_err(|e| format!("{e:#} (if bpf-linker or rust-src is at fault, {SETUP_HINT})"))
}

/// Leaves empty objects where `capture/ebpf.rs` and `capture/sockmap.rs` embed the programs
/// from.
fn write_empty_object() -> Result<(), String> {
    let out = PathBuf::from(env::var_os("OUT_DIR").ok_or("OUT_DIR is not set")?);
    for object in ["amesh-capture", "amesh-hops"] {
        std::fs::write(out.join(object), []).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The directory holding a bpf-linker built for this toolchain's libLLVM, else one on PATH.
fn find_bpf_linker(sysroot: &Path) -> Result<PathBuf, String> {
    let lib = sysroot.join("lib");
    let libllvm = std::fs::read_dir(&lib)
        .map_err(|e| format!("reading {}: {e}", lib.display()))?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("libLLVM"))
        .filter(|e| {
            e.metadata()
                .map(|m| m.is_file() && m.len() > 1 << 20)
                .unwrap_or(false)
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next();
    if let (Some(libllvm), Some(home)) = (libllvm, env::var_os("HOME")) {
        let dir = PathBuf::from(home)
            .join(".cache/amesh")
            .join(format!("bpf-linker-{BPF_LINKER_VERSION}-{libllvm}"))
            .join("bin");
        println!("cargo:rerun-if-changed={}", dir.display());
        if dir.join("bpf-linker").is_file() {
            return Ok(dir);
        }
    }
    let on_path = env::var_os("PATH")
        .and_then(|p| env::split_paths(&p).find(|d| d.join("bpf-linker").is_file()));
    on_path.ok_or_else(|| format!("bpf-linker is not installed for this toolchain; {SETUP_HINT}"))
}

fn output(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("running {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
