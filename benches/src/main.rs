//! `amesh-bench`: the lab benchmark. Brings up a two-node lab with the mesh (and a second one
//! with the other capture mode, to compare nft and ebpf capture), measures the mesh paths
//! against the direct path in the same run, prints markdown tables and writes JSON.
//!
//! With `--layout pair` it measures ztunnel alone instead: two namespaces, one dedicated-mode
//! ztunnel each, HBONE and plain-TCP passthrough against direct ([`pair`]).
//!
//! - [`settings`]: the command line and what bounds each measurement;
//! - [`path`]: what a measurement knows of a path (client netns, server address), any layout;
//! - [`fixture`]: the lab and its two paths; [`servers`]: load servers in the server pods;
//! - [`throughput`], [`latency`], [`connrate`], [`ztunnel`]: the measurements;
//! - [`bench`](mod@bench): the order they run in; [`report`]: medians, ratios, table and JSON.

mod bench;
mod busy;
mod connrate;
mod fixture;
mod host;
mod latency;
mod pair;
mod path;
mod report;
mod servers;
mod settings;
mod stats;
mod throughput;
mod ztunnel;

use anyhow::Context;
use clap::Parser;

fn main() -> std::process::ExitCode {
    // The lab runs its pods' apps from the binary that brought it up: this one.
    let args: Vec<_> = std::env::args_os().collect();
    if let Some(code) = lab::apps::run_if_app(&args) {
        return code;
    }
    match bench_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("amesh-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn bench_main() -> anyhow::Result<()> {
    let cli = settings::Cli::parse();
    // Results go to stdout: logs to stderr, `warn` unless `RUST_LOG` says otherwise.
    mesh::telemetry::init_to(
        mesh::telemetry::LogFormat::from_env(),
        "warn",
        mesh::telemetry::LogOutput::Stderr,
    )
    .map_err(anyhow::Error::msg)?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!("amesh-bench builds network namespaces: run it as root");
    }
    raise_fd_limit();
    let settings = settings::Settings::from_cli(&cli);
    let (markdown, json) = match settings.layout {
        settings::Layout::Lab => {
            let report = bench::run(&settings)?;
            (
                report::markdown(&report),
                serde_json::to_string_pretty(&report)?,
            )
        }
        settings::Layout::Pair => {
            let report = pair::run(&settings)?;
            (
                pair::report::markdown(&report),
                serde_json::to_string_pretty(&report)?,
            )
        }
    };
    println!("{markdown}");
    let out = cli.out_path();
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&out, json + "\n").with_context(|| format!("writing {}", out.display()))?;
    eprintln!("amesh-bench: wrote {}", out.display());
    Ok(())
}

/// Held connections need two descriptors each in this process and one in each ztunnel (which
/// inherit the limit): raise the soft limit to the hard one.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct we pass, nothing else.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
