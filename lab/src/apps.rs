//! The processes a lab starts from its own binary: the echo app of every pod and the keeper
//! of a detached lab. They are subcommands of `amesh-lab`, and any other binary that brings
//! labs up in-process (the benchmark) can serve them too by handing its command line to
//! [`run_if_app`] first: then it is its own lab binary and `amesh-lab` need not be built.

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::echo::{self, EchoConfig};
use crate::plan::LabId;

/// The lab's internal subcommands (hidden from `--help`).
#[derive(Debug, Subcommand)]
pub enum AppCmd {
    /// (internal) The echo app of a pod.
    #[command(hide = true)]
    Echo(EchoArgs),
    /// (internal) Holds a detached lab's lock until killed.
    #[command(hide = true)]
    Keep {
        #[arg(long)]
        id: LabId,
    },
    /// (internal) The lab's stand-in Kubernetes API server.
    #[command(hide = true)]
    Apiserver(ApiserverArgs),
    /// (internal) The lab's stand-in cluster DNS.
    #[command(hide = true)]
    Dns {
        /// The manifests folder to answer from.
        #[arg(long)]
        manifests: std::path::PathBuf,
        #[arg(long)]
        listen: std::net::SocketAddr,
    },
}

#[derive(Debug, Args)]
pub struct ApiserverArgs {
    /// The manifests folder to answer from.
    #[arg(long)]
    manifests: std::path::PathBuf,
    #[arg(long)]
    listen: std::net::SocketAddr,
    /// The lab CA's folder (signs the serving certificate).
    #[arg(long)]
    ca_dir: std::path::PathBuf,
    /// Names (IPs or DNS names) of the serving certificate.
    #[arg(long = "name", required = true)]
    names: Vec<String>,
    /// File holding the bearer token clients must present.
    #[arg(long)]
    token_file: std::path::PathBuf,
}

#[derive(Debug, Args)]
pub struct EchoArgs {
    #[arg(long)]
    pod: String,
    #[arg(long)]
    namespace: String,
    #[arg(long, default_value = "")]
    version: String,
    #[arg(long, default_value = "")]
    node: String,
    /// Comma-separated TCP ports.
    #[arg(long, value_delimiter = ',', num_args = 0..)]
    ports: Vec<u16>,
    /// The pod's resolv.conf (the lab enters the pod's netns but not a mount namespace, so
    /// `/etc/resolv.conf` would be the host's).
    #[arg(long, default_value = "/etc/resolv.conf")]
    resolv_conf: std::path::PathBuf,
}

impl AppCmd {
    /// Runs the app; the keeper never returns.
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            AppCmd::Echo(args) => {
                // The container's `env`, which the lab gave this process (echo::env).
                let app = echo::env::AppEnv::parse(|name| std::env::var(name).ok())
                    .context("the echo app's environment")?;
                let config = EchoConfig {
                    pod: args.pod,
                    namespace: args.namespace,
                    version: args.version,
                    node: args.node,
                    ports: args.ports,
                    app,
                    resolv_conf: args.resolv_conf,
                    fail_count: Default::default(),
                };
                // One thread per pod app is plenty, and keeps a lab of many pods light.
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("cannot start the tokio runtime")?;
                rt.block_on(echo::run(config))?;
                Ok(())
            }
            AppCmd::Apiserver(args) => {
                let token = std::fs::read_to_string(&args.token_file)
                    .with_context(|| format!("reading {}", args.token_file.display()))?
                    .trim()
                    .to_string();
                let tls = crate::apiserver::tls_config(&args.ca_dir, &args.names)?;
                let server = crate::apiserver::ApiServer {
                    manifests: args.manifests,
                    token,
                };
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("cannot start the tokio runtime")?;
                rt.block_on(crate::apiserver::run(server, args.listen, tls))?;
                Ok(())
            }
            AppCmd::Dns { manifests, listen } => {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("cannot start the tokio runtime")?;
                rt.block_on(crate::clusterdns::run(manifests, listen))
                    .with_context(|| format!("serving DNS on {listen}"))?;
                Ok(())
            }
            AppCmd::Keep { id } => {
                tracing::info!(lab = %id, "keeping the lab alive until killed");
                loop {
                    std::thread::park();
                }
            }
        }
    }
}

#[derive(Parser)]
#[command(name = "amesh-lab")]
struct AppCli {
    #[command(subcommand)]
    cmd: AppCmd,
}

/// If `args` (a whole command line, program name first) starts one of the lab's apps, runs it
/// and returns its exit code; otherwise `None`, and the caller goes on with its own command
/// line. Logs go to stderr (the lab writes them to the process's log file) at `RUST_LOG`, info
/// by default.
pub fn run_if_app(args: &[OsString]) -> Option<ExitCode> {
    let first = args.get(1)?.to_str()?;
    AppCli::command().find_subcommand(first)?;
    let cli = match AppCli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return Some(ExitCode::from(2));
        }
    };
    init_logs();
    Some(match cli.cmd.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("amesh-lab {first}: {e:#}");
            ExitCode::FAILURE
        }
    })
}

/// Logs of the lab's processes: stderr (an app's stdout may be its answer), `RUST_LOG` or
/// info, `LOG_FORMAT=json` as every amesh binary; they log into files, so colour codes only
/// when someone watches a terminal (`mesh::telemetry`).
pub fn init_logs() {
    if let Err(e) = mesh::telemetry::init_to(
        mesh::telemetry::LogFormat::from_env(),
        "info",
        mesh::telemetry::LogOutput::Stderr,
    ) {
        eprintln!("amesh-lab: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn other_command_lines_are_left_to_the_caller() {
        assert!(run_if_app(&line(&["amesh-bench"])).is_none());
        assert!(run_if_app(&line(&["amesh-bench", "--quick"])).is_none());
        assert!(run_if_app(&line(&["amesh-lab", "status"])).is_none());
    }

    #[test]
    fn a_malformed_app_command_line_is_a_usage_error() {
        // `echo` without its required --pod/--namespace: clap's error, exit code 2, no app.
        assert_eq!(
            run_if_app(&line(&["amesh-bench", "echo"])),
            Some(ExitCode::from(2))
        );
        assert_eq!(
            run_if_app(&line(&["amesh-bench", "keep", "--id", "NOT A LAB ID"])),
            Some(ExitCode::from(2))
        );
    }
}
