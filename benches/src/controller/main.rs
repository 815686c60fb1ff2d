//! `amesh-bench-controller`: how long the real `amesh-controller` takes, from its start on a
//! folder of N pods / S services / P AuthorizationPolicies, until one real xDS client per node
//! (each feeding ztunnel's state store) has ACKed every type and holds the whole config; and
//! what the controller costs in memory and CPU. Prints a markdown table and writes JSON.
//!
//! - [`manifests`]: the synthetic cluster; [`run`]: one repetition; [`report`]: table and JSON.

#[path = "../host.rs"]
mod host;
mod manifests;
mod report;
mod run;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

/// Command line of `amesh-bench-controller`.
#[derive(Debug, Parser)]
#[command(
    name = "amesh-bench-controller",
    about = "Times amesh-controller from start until every node's xDS client holds the whole \
             config of a generated folder (5,000 pods / 500 services / 200 policies by \
             default), and reads the controller's memory and CPU."
)]
pub struct Cli {
    /// Pods (each an ambient workload).
    #[arg(long, default_value_t = 5_000)]
    pub pods: usize,
    /// Services, each selecting a group of pods of its namespace.
    #[arg(long, default_value_t = 500)]
    pub services: usize,
    /// AuthorizationPolicies (L4, each one Authorization).
    #[arg(long, default_value_t = 200)]
    pub policies: usize,
    /// Namespaces (all `istio.io/dataplane-mode: ambient`).
    #[arg(long, default_value_t = 50)]
    pub namespaces: usize,
    /// Nodes: pods are spread over them and one xDS client connects per node.
    #[arg(long, default_value_t = 10)]
    pub nodes: usize,
    /// Repetitions (a fresh controller and fresh clients each; medians are reported).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Limit of one repetition, in seconds.
    #[arg(long, default_value_t = 120)]
    pub timeout_secs: u64,
    /// Where the JSON result goes.
    #[arg(long, default_value = "target/bench/controller.json")]
    pub out: PathBuf,
    /// The amesh-controller binary (default: `AMESH_CONTROLLER_BIN`, or next to this one).
    #[arg(long)]
    pub controller: Option<PathBuf>,
    /// Keep the generated manifests and the controller logs (their folder is printed).
    #[arg(long)]
    pub keep: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Results go to stdout: logs to stderr, `warn` unless `RUST_LOG` says otherwise.
    mesh::telemetry::init_to(
        mesh::telemetry::LogFormat::from_env(),
        "warn",
        mesh::telemetry::LogOutput::Stderr,
    )
    .map_err(anyhow::Error::msg)?;
    let shape = manifests::Shape {
        pods: cli.pods,
        services: cli.services,
        policies: cli.policies,
        namespaces: cli.namespaces,
        nodes: cli.nodes,
    };
    shape.check()?;
    let controller = run::find_controller(cli.controller.as_deref())?;
    let reps = cli.reps.max(1);
    let timeout = Duration::from_secs(cli.timeout_secs.max(1));

    let work = tempfile::Builder::new()
        .prefix("amesh-bench-controller-")
        .tempdir()
        .context("creating a temporary folder")?;
    let manifests_dir = work.path().join("manifests");
    std::fs::create_dir_all(&manifests_dir)?;
    let written = manifests::write(&shape, &manifests_dir)?;
    progress(&format!(
        "{} pods, {} services, {} policies in {} namespaces on {} nodes: {} files, {:.1} MiB in {}",
        shape.pods,
        shape.services,
        shape.policies,
        shape.namespaces,
        shape.nodes,
        written.files,
        written.bytes as f64 / (1024.0 * 1024.0),
        manifests_dir.display()
    ));

    let runtime = tokio::runtime::Runtime::new().context("tokio runtime")?;
    let load_start = report::load_average();
    let setup = run::Setup {
        controller: &controller,
        manifests: &manifests_dir,
        shape: &shape,
        timeout,
        work: work.path(),
    };
    let mut runs = Vec::new();
    for rep in 1..=reps {
        let r = run::run(&setup, rep, &runtime)
            .with_context(|| format!("repetition {rep} of {reps}"))?;
        progress(&format!(
            "rep {rep}/{reps}: all {} clients synced in {:.2} s; controller RSS {:.1} MiB (peak {:.1} MiB), {:.2} CPU s",
            shape.nodes,
            r.all_synced_secs,
            r.rss_kib as f64 / 1024.0,
            r.peak_rss_kib as f64 / 1024.0,
            r.cpu_secs
        ));
        runs.push(r);
    }
    let report = report::Report::new(
        report::machine(load_start),
        report::Settings {
            shape,
            repetitions: reps,
            timeout_secs: timeout.as_secs(),
            controller: controller.display().to_string(),
            manifests: written,
        },
        runs,
    );
    println!("{}", report::markdown(&report));
    if let Some(dir) = cli.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let json = serde_json::to_string_pretty(&report)?;
    std::fs::write(&cli.out, json + "\n")
        .with_context(|| format!("writing {}", cli.out.display()))?;
    progress(&format!("wrote {}", cli.out.display()));
    if cli.keep {
        let kept = work.keep();
        progress(&format!("kept manifests and logs in {}", kept.display()));
    }
    Ok(())
}

fn progress(msg: &str) {
    eprintln!("amesh-bench-controller: {msg}");
}
