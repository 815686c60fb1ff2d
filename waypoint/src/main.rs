//! `waypoint`: reads its settings from the environment, sets up logging and the runtime, runs
//! until SIGTERM or `/quitquitquit`, then drains.

use mesh::telemetry::LogFormat;

const USAGE: &str = "\
waypoint (amesh): the L7 proxy of an ambient namespace.

Configured by environment variables: POD_NAME, POD_NAMESPACE, GATEWAY_NAME, SERVICE_ACCOUNT,
INSTANCE_IP, TRUST_DOMAIN; XDS_ADDRESS (+ XDS_ROOT_CA, CA_ADDRESS, CA_ROOT_CA, AMESH_TOKEN or
AMESH_TOKEN_FILE) or LOCAL_XDS_PATH + AMESH_L7_PATH + LOCAL_CA_DIR; WAYPOINT_WORKER_THREADS;
AMESH_ACCESS_LOG (on|off, default on).
Ports: 15008 HBONE, 15000 admin (localhost), 15020 metrics, 15021 readiness.
";

fn main() {
    match std::env::args().nth(1).as_deref() {
        None => {}
        Some("version" | "--version" | "-V") => {
            println!("waypoint {} (amesh)", env!("CARGO_PKG_VERSION"));
            return;
        }
        Some("help" | "--help" | "-h") => {
            print!("{USAGE}");
            return;
        }
        Some(other) => {
            eprintln!("waypoint: unknown argument {other:?}\n\n{USAGE}");
            std::process::exit(2);
        }
    }
    let config = match waypoint::config::Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("waypoint: configuration error: {e}");
            std::process::exit(2);
        }
    };
    // Istio's `LOG_FORMAT`, as the ztunnel and the controller read it.
    let format = LogFormat::from_env();
    let log_reload = match mesh::telemetry::init(format) {
        Ok(reload) => reload,
        Err(e) => {
            eprintln!("waypoint: {e}");
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
            eprintln!("waypoint: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(waypoint::run::run(config, Some(log_reload))) {
        eprintln!("waypoint: {e:#}");
        std::process::exit(1);
    }
}
