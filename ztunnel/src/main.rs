//! `ztunnel`: reads its configuration from the environment, sets up logging and the runtime,
//! runs until SIGTERM and drains.

use mesh::telemetry::LogFormat;

// The static musl build (the container image) allocates with mimalloc. musl's own malloc gives
// every allocation above ~128 KiB (relay buffers, TLS and HTTP/2 frame buffers) a mapping of its
// own and unmaps it on free, so each buffer cost page faults, zeroing and TLB shootdowns: about
// half of the HBONE throughput and twice the CPU per GB of the glibc build (ARCHITECTURE.md,
// Images). The glibc build keeps glibc's malloc, tuned in `ztunnel::memory`.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_arena_eager_commit` in `mi_option_e` of the mimalloc libmimalloc-sys builds (v3;
/// the crate names only some of the options).
#[cfg(target_env = "musl")]
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

const USAGE: &str = "\
ztunnel: amesh's node proxy (Istio ambient's ztunnel, wire compatible)

Usage: ztunnel            run, configured by environment variables
       ztunnel version    print the version and exit
       ztunnel --help     print this and exit

Main variables (Istio's names):
  XDS_ADDRESS, CA_ADDRESS   control plane (https:// if no scheme; istiod's address in a cluster)
  XDS_ROOT_CA, CA_ROOT_CA   its root (default /var/run/secrets/istio/root-cert.pem)
  LOCAL_XDS_PATH            a local config file instead of xDS (not with XDS_ADDRESS)
  LOCAL_CA_DIR              a CA on local disk instead of CA_ADDRESS (not with it)
  NODE_NAME                 the node this ztunnel serves
  POD_NAME, POD_NAMESPACE   ztunnel's own pod (downward API): its xDS node id
  CAPTURE_MODE              ebpf or nft (unset: ebpf where the kernel allows, else nft)
  SECRET_TTL                workload certificate lifetime (default 24h)
  INPOD_UDS                 take pods from istio-cni over ZDS at this socket
  PROXY_MODE                shared (default) or dedicated
See ARCHITECTURE.md (ztunnel, config) for all of them.
";

fn main() {
    // mimalloc commits its arenas eagerly where the kernel overcommits, and what it touches
    // there stays resident: 6.5 MiB more RSS idle and 10 MiB more after a burst than with lazy
    // commit, at no measured CPU cost (ARCHITECTURE.md, Images). Set before anything
    // else allocates, so the arena is reserved with the option in force.
    #[cfg(target_env = "musl")]
    // SAFETY: sets a process-wide allocator option; no other thread exists yet.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0);
    }
    // Informational commands need no configuration.
    match std::env::args().nth(1).as_deref() {
        None => {}
        Some("version" | "--version" | "-V") => {
            println!("ztunnel {} (amesh)", env!("CARGO_PKG_VERSION"));
            return;
        }
        Some("help" | "--help" | "-h") => {
            print!("{USAGE}");
            return;
        }
        Some(other) => {
            eprintln!("ztunnel: unknown argument {other:?}\n\n{USAGE}");
            std::process::exit(2);
        }
    }
    ztunnel::memory::configure();
    let config = match ztunnel::config::Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ztunnel: configuration error: {e}");
            std::process::exit(2);
        }
    };
    let format = if config.json_logs {
        LogFormat::Json
    } else {
        LogFormat::Text
    };
    let log_reload = match mesh::telemetry::init(format) {
        Ok(reload) => reload,
        Err(e) => {
            eprintln!("ztunnel: {e}");
            std::process::exit(1);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.worker_threads)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ztunnel: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    // `run` runs as a task, not in `block_on` on this thread: its start-up (config, certificates,
    // capture) allocates and frees megabytes, and mimalloc (the image's allocator) gives a
    // thread's freed pages back only when that thread calls it again, which a main thread that
    // only waits never does (3 MiB kept for ever at idle, ARCHITECTURE.md, Images). On a
    // worker, the periodic release of `ztunnel::memory` collects them.
    let task = runtime.spawn(ztunnel::run::run(config, Some(log_reload)));
    let result = runtime
        .block_on(task)
        .unwrap_or_else(|e| Err(anyhow::anyhow!("ztunnel's main task ended abnormally: {e}")));
    if let Err(e) = result {
        tracing::error!("ztunnel failed: {e:#}");
        std::process::exit(1);
    }
}
