//! `amesh-lab`: bring a lab cluster up from manifests, look at it, run commands in its pods,
//! tear it down. Also the echo app and the keeper that lab processes run as.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use lab::client::{self, HttpVersion};
use lab::{reap, summary, Lab, LabId, LabOptions, LabState};

#[derive(Parser)]
#[command(
    name = "amesh-lab",
    about = "A cluster of network namespaces on one machine"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Bring a lab up from a folder of Kubernetes manifests and print its summary.
    Up {
        /// Folder (or file) of manifests.
        dir: PathBuf,
        #[arg(long, default_value_t = 2)]
        nodes: usize,
        /// Lab id (1-12 of [a-z0-9]); random if not given.
        #[arg(long)]
        id: Option<LabId>,
        /// Stay in the foreground and tear the lab down on Ctrl-C / SIGTERM.
        #[arg(long)]
        foreground: bool,
        /// Plain pods only: no ztunnel, no capture.
        #[arg(long)]
        no_mesh: bool,
        /// ztunnel capture backend: auto (ztunnel's default: ebpf where the kernel allows it,
        /// else nft), ebpf or nft.
        #[arg(long, default_value = "auto")]
        capture: String,
        /// Give nodes and pods IPv6 addresses too (ztunnel captures IPv4 only and leaves
        /// IPv6 untouched).
        #[arg(long)]
        dual_stack: bool,
        /// Serve the controller's live service graph page on this port of the lab's root netns
        /// address (reachable from that netns: `ip netns exec amesh-<id>-root <browser>`).
        #[arg(long, value_name = "PORT")]
        graph_port: Option<u16>,
    },
    /// Bring a lab up with the mesh, send traffic between every pod and service, print what
    /// happened, and tear the lab down.
    Demo {
        /// Folder of manifests.
        dir: PathBuf,
        #[arg(long, default_value_t = 2)]
        nodes: usize,
    },
    /// Tear a lab down (the only one, the one given, or all).
    Down {
        #[arg(long, conflicts_with = "all")]
        id: Option<LabId>,
        #[arg(long)]
        all: bool,
    },
    /// Run a command inside a pod's network namespace.
    Exec {
        #[arg(long)]
        id: Option<LabId>,
        /// Pod name, or NAMESPACE/NAME.
        pod: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Show the labs on this machine.
    Status {
        #[arg(long)]
        id: Option<LabId>,
        /// Print state.json instead of the summary.
        #[arg(long)]
        json: bool,
    },
    /// Talk to an echo app from inside a pod: raw TCP echo, or an HTTP GET.
    Client(ClientArgs),
    /// Roll one node's ztunnel over, as a DaemonSet rolling update does: SIGTERM, drain
    /// (killed after the grace period), start the new process, wait until it is ready.
    RestartZtunnel {
        #[arg(long)]
        id: Option<LabId>,
        /// The node (node1, node2, ...).
        #[arg(long)]
        node: String,
        /// Directory holding the new `ztunnel` binary (default: the lab's).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// Seconds ztunnel may take to drain and exit before it is killed (the DaemonSet's
        /// terminationGracePeriodSeconds).
        #[arg(long, default_value_t = lab::ztunnels::DEFAULT_GRACE.as_secs())]
        grace_secs: u64,
    },
    /// The pod apps and the keeper (hidden).
    #[command(flatten)]
    App(lab::apps::AppCmd),
}

#[derive(Args)]
struct ClientArgs {
    #[arg(long)]
    id: Option<LabId>,
    /// The pod to connect from (name or NAMESPACE/NAME).
    #[arg(long)]
    from: String,
    /// Where to connect (IP:PORT).
    addr: SocketAddr,
    /// Send an HTTP/1.1 GET instead of a raw echo.
    #[arg(long, conflicts_with = "http2")]
    http1: bool,
    /// Send an HTTP/2 (h2c) GET instead of a raw echo.
    #[arg(long)]
    http2: bool,
    /// Path of the HTTP request.
    #[arg(long, default_value = "/")]
    path: String,
    /// Message of the raw echo.
    #[arg(long, default_value = "hello")]
    message: String,
    #[arg(long, default_value_t = 5)]
    timeout_secs: u64,
}

fn main() -> ExitCode {
    lab::apps::init_logs();
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("amesh-lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Up {
            dir,
            nodes,
            id,
            foreground,
            no_mesh,
            capture,
            dual_stack,
            graph_port,
        } => up(
            dir,
            nodes,
            id,
            foreground,
            (!no_mesh).then_some(capture),
            dual_stack,
            graph_port,
        ),
        Cmd::Demo { dir, nodes } => {
            print!("{}", lab::demo::run(&dir, nodes)?);
            Ok(())
        }
        Cmd::Down { id, all } => {
            if all {
                for id in reap::down_all()? {
                    println!("removed lab {id}");
                }
            } else {
                let id = reap::resolve(id.as_ref())?;
                reap::down(&id)?;
                println!("removed lab {id}");
            }
            Ok(())
        }
        Cmd::Exec { id, pod, command } => {
            let state = load(id.as_ref())?;
            let pod = state.pod(&pod)?;
            let err = Command::new("ip")
                .args(["netns", "exec", &pod.netns])
                .args(&command)
                .exec();
            bail!("cannot run `ip netns exec {} ...`: {err}", pod.netns)
        }
        Cmd::Status { id, json } => status(id, json),
        Cmd::Client(args) => client_cmd(args),
        Cmd::RestartZtunnel {
            id,
            node,
            bin_dir,
            grace_secs,
        } => {
            let id = reap::resolve(id.as_ref())?;
            let done = lab::ztunnels::restart_detached(
                &id,
                &node,
                bin_dir.as_deref(),
                std::time::Duration::from_secs(grace_secs),
            )?;
            println!("{done}");
            Ok(())
        }
        Cmd::App(app) => app.run(),
    }
}

fn up(
    dir: PathBuf,
    nodes: usize,
    id: Option<LabId>,
    foreground: bool,
    mesh: Option<String>,
    dual_stack: bool,
    graph_port: Option<u16>,
) -> anyhow::Result<()> {
    let binary = lab::cluster::find_binary()?;
    let options = LabOptions {
        id,
        mesh: mesh.map(|capture_mode| lab::mesh::MeshOptions {
            capture_mode,
            graph_port,
            ..lab::mesh::MeshOptions::beside(&binary)
        }),
        binary: Some(binary),
        dual_stack,
        ..LabOptions::default()
    };
    let lab = Lab::up(&dir, nodes, options)
        .with_context(|| format!("bringing up a lab from {}", dir.display()))?;
    if let Some(addr) = lab::mesh::graph_addr(lab.state()) {
        println!(
            "live service graph: http://{addr}/ (from the lab's root netns: ip netns exec {} ...)",
            lab.state().root_netns
        );
    }
    if !foreground {
        let state = lab.detach()?;
        print!("{}", summary::render(&state, true));
        println!("\n`amesh-lab exec POD -- CMD` runs a command in a pod; `amesh-lab down --id {}` removes the lab.", state.id);
        return Ok(());
    }
    print!("{}", summary::render(lab.state(), true));
    println!("\nrunning in the foreground; Ctrl-C tears the lab down");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    })
    .context("waiting for a signal")?;
    lab.down()?;
    Ok(())
}

fn load(id: Option<&LabId>) -> anyhow::Result<LabState> {
    let id = reap::resolve(id)?;
    Ok(LabState::load(&id)?)
}

fn status(id: Option<LabId>, json: bool) -> anyhow::Result<()> {
    let labs = reap::list();
    let labs: Vec<_> = labs
        .into_iter()
        .filter(|l| id.as_ref().is_none_or(|id| &l.id == id))
        .collect();
    if labs.is_empty() {
        println!("no labs");
        return Ok(());
    }
    for l in labs {
        match (&l.state, json) {
            (Some(state), true) => println!("{}", serde_json::to_string_pretty(state)?),
            (Some(state), false) => print!("{}", summary::render(state, l.alive)),
            (None, _) => println!(
                "lab {}: leftovers without a state file (`amesh-lab down --id {}` removes them)",
                l.id, l.id
            ),
        }
    }
    Ok(())
}

fn client_cmd(args: ClientArgs) -> anyhow::Result<()> {
    let state = load(args.id.as_ref())?;
    let pod = state.pod(&args.from)?;
    let timeout = Duration::from_secs(args.timeout_secs);
    let stream = client::connect_in(&pod.netns, args.addr, timeout)?;
    let version = match (args.http1, args.http2) {
        (true, _) => HttpVersion::Http1,
        (_, true) => HttpVersion::Http2,
        _ => {
            let mut stream = stream;
            let back = client::tcp_echo(&mut stream, args.message.as_bytes())?;
            println!("{}", String::from_utf8_lossy(&back));
            return Ok(());
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let authority = args.addr.to_string();
    let (status, reply) = rt.block_on(client::http_get(
        stream, version, &authority, &args.path, timeout,
    ))?;
    println!("{status}");
    println!("{}", serde_json::to_string_pretty(&reply)?);
    Ok(())
}
