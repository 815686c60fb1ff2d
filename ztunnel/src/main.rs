//! `ztunnel`: reads its configuration from the environment, sets up logging and the runtime,
//! runs until SIGTERM and drains.

use tracing_subscriber::{fmt, prelude::*, reload, EnvFilter};

fn main() {
    ztunnel::memory::configure();
    let config = match ztunnel::config::Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ztunnel: configuration error: {e}");
            std::process::exit(2);
        }
    };
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    if config.json_logs {
        registry.with(fmt::layer().json()).init();
    } else {
        registry.with(fmt::layer()).init();
    }
    let log_reload: ztunnel::admin::LogReload = Box::new(move |level: &str| {
        let f = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        handle.reload(f).map_err(|e| e.to_string())
    });
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
    if let Err(e) = runtime.block_on(ztunnel::run::run(config, Some(log_reload))) {
        tracing::error!("ztunnel failed: {e:#}");
        std::process::exit(1);
    }
}
