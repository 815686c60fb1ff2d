//! Build script: compiles the `.proto` files under `proto/` into Rust with the pure-Rust `protox`
//! compiler (no system `protoc`) and generates prost messages plus tonic clients and servers.

use std::path::Path;
use std::process::ExitCode;

/// Include root for every import path.
const PROTO_ROOT: &str = "proto";

/// Every file to compile, relative to [`PROTO_ROOT`]; their imports come along automatically.
const PROTO_FILES: &[&str] = &[
    "google/rpc/status.proto",
    "envoy/config/core/v3/base.proto",
    "envoy/service/discovery/v3/discovery.proto",
    "istio/workload/workload.proto",
    "istio/workload/zds.proto",
    "istio/security/authorization.proto",
    "istio/v1/auth/ca.proto",
    "amesh/l7/v1/l7.proto",
];

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            // Display, not the quoted Debug that `main() -> Result` prints, keeps this readable.
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    for file in PROTO_FILES {
        println!("cargo:rerun-if-changed={PROTO_ROOT}/{file}");
    }

    let mut compiler = protox::Compiler::new([PROTO_ROOT])
        .map_err(|e| format!("cannot use {PROTO_ROOT}/ as a proto include root: {e}"))?;
    // Source info carries the .proto comments into the generated rustdoc.
    compiler.include_source_info(true).include_imports(true);
    // One file at a time, so that a failure names the file it came from.
    for file in PROTO_FILES {
        if !Path::new(PROTO_ROOT).join(file).is_file() {
            return Err(format!(
                "{PROTO_ROOT}/{file}: listed in build.rs but missing"
            ));
        }
        compiler.open_file(file).map_err(|e| {
            // protox's Debug output carries `file:line:column: message`; its Display only the
            // message. The file that failed may be an import of the one being opened.
            let at = e.file().unwrap_or(file);
            format!("failed to compile {PROTO_ROOT}/{file} (error in {PROTO_ROOT}/{at}): {e:?}")
        })?;
    }
    let fds = compiler.file_descriptor_set();

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)
        .map_err(|e| format!("code generation from {PROTO_FILES:?} failed: {e}"))?;
    Ok(())
}
