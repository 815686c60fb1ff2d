//! `amesh-bench-waypoint`: HTTP through amesh's waypoint against the same HTTP through Envoy
//! configured as Istio's waypoint, in one lab and one run: requests per second, p50/p99
//! latency, proxy CPU per 1,000 requests and RSS, for HTTP/1.1 (keep-alive) and HTTP/2 at
//! fixed concurrencies, on four paths (direct, ztunnel only, ztunnel + amesh waypoint,
//! ztunnel + Envoy). Prints a markdown table with the targets met or not, and writes JSON.
//!
//! - [`run`]: the lab, the Envoy swap, the order of the measurements;
//! - [`envoy`]: Envoy's certificate and config; [`load`]: the load generator;
//! - [`report`]: medians, ratios, targets, table and JSON.

mod envoy;
#[path = "../host.rs"]
mod host;
mod load;
mod report;
mod run;
#[path = "../stats.rs"]
mod stats;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use lab::mesh::ControlPlane;
use serde::Serialize;

/// Command line of `amesh-bench-waypoint`.
#[derive(Debug, Parser)]
#[command(
    name = "amesh-bench-waypoint",
    about = "Measures HTTP/1.1 and HTTP/2 through amesh's waypoint against Envoy as a waypoint \
             (CONNECT over mTLS with the mesh's certificates, HTTP routing, HBONE to the \
             destination) on a two-node lab, in the same run, beside the direct and \
             ztunnel-only paths."
)]
pub struct Cli {
    /// Smoke: one repetition, 1 s per point.
    #[arg(long)]
    pub quick: bool,
    /// Where the JSON result goes.
    #[arg(long, default_value = "target/bench/waypoint.json")]
    pub out: PathBuf,
    /// Repetitions of every point (medians are reported).
    #[arg(long)]
    pub reps: Option<usize>,
    /// Seconds of each measured window (after its warm-up).
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Requests in flight, one point each (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub concurrency: Option<Vec<usize>>,
    /// Where ztunnels and amesh's waypoint get their config and certificates.
    #[arg(long, env = "AMESH_LAB_CONTROL_PLANE", value_enum,
          default_value_t = ControlPlane::LocalFile)]
    pub control_plane: ControlPlane,
    /// Manifests folder of the cluster (default: the fixture shipped with the bench).
    #[arg(long)]
    pub fixture: Option<PathBuf>,
}

/// What bounds a run; recorded in the JSON.
#[derive(Clone, Debug, Serialize)]
pub struct Settings {
    pub mode: &'static str,
    pub repetitions: usize,
    pub concurrency: Vec<usize>,
    /// Response body size.
    pub body_size: usize,
    #[serde(serialize_with = "secs")]
    pub warmup: Duration,
    #[serde(serialize_with = "secs")]
    pub window: Duration,
    /// Requests per point, warm-up included (the window may end first).
    pub max_requests: usize,
    #[serde(serialize_with = "control_plane_name")]
    pub control_plane: ControlPlane,
    pub fixture: PathBuf,
}

impl Settings {
    fn from_cli(cli: &Cli) -> Settings {
        let (mode, repetitions, warmup, window) = if cli.quick {
            ("quick", 1, 0.3, 1.0)
        } else {
            ("full", 3, 1.0, 4.0)
        };
        Settings {
            mode,
            repetitions: cli.reps.unwrap_or(repetitions).max(1),
            concurrency: cli.concurrency.clone().unwrap_or_else(|| vec![16, 64]),
            body_size: 1024,
            warmup: Duration::from_secs_f64(warmup),
            window: Duration::from_secs_f64(cli.seconds.unwrap_or(window).max(0.1)),
            max_requests: 2_000_000,
            control_plane: cli.control_plane,
            fixture: cli.fixture.clone().unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("fixtures")
                    .join("waypoint")
            }),
        }
    }
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

fn control_plane_name<S: serde::Serializer>(c: &ControlPlane, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(c.name())
}

fn main() -> std::process::ExitCode {
    // The lab runs its pods' apps from the binary that brought it up: this one.
    let args: Vec<_> = std::env::args_os().collect();
    if let Some(code) = lab::apps::run_if_app(&args) {
        return code;
    }
    match bench_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("amesh-bench-waypoint: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn bench_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Results go to stdout: logs to stderr, `warn` unless `RUST_LOG` says otherwise.
    mesh::telemetry::init_to(
        mesh::telemetry::LogFormat::from_env(),
        "warn",
        mesh::telemetry::LogOutput::Stderr,
    )
    .map_err(anyhow::Error::msg)?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!("amesh-bench-waypoint builds network namespaces: run it as root");
    }
    let settings = Settings::from_cli(&cli);
    let load_start = host::load_average();
    let measured = run::run(&settings)?;
    let report = report::build(run::machine(load_start), settings, measured);
    println!("{}", report::markdown(&report));
    if let Some(dir) = cli.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let json = serde_json::to_string_pretty(&report)?;
    std::fs::write(&cli.out, json + "\n")
        .with_context(|| format!("writing {}", cli.out.display()))?;
    eprintln!("amesh-bench-waypoint: wrote {}", cli.out.display());
    Ok(())
}
