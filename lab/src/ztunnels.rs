//! Rolling one node's ztunnel over to a new process, as a DaemonSet's `RollingUpdate`
//! (`maxUnavailable: 1`) does on each node in turn: SIGTERM, ztunnel drains (up to its
//! `DRAIN_DEADLINE_SECONDS`), the kubelet kills it if it outlives the pod's
//! `terminationGracePeriodSeconds`, then the new container starts (the same or a new binary)
//! and the node counts again once it is ready. The e2e upgrade scenario and
//! `amesh-lab restart-ztunnel` both use it; the latter on a lab another process brought up.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::cluster::{Lab, LabError};
use crate::mesh::{self, MeshOptions};
use crate::plan::LabId;
use crate::process::{self, ProcessRecord};
use crate::state::LabState;

/// How long a ztunnel may take to exit after SIGTERM before it is killed, unless the caller
/// says otherwise: the deploy DaemonSet's `terminationGracePeriodSeconds`.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// How long the new ztunnel may take to be ready and to have every pod in its config.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

fn error(e: impl std::fmt::Display) -> LabError {
    LabError::Hook {
        hook: "restart_ztunnel",
        source: e.to_string().into(),
    }
}

/// A node's ztunnel stopped ([`stop`]).
#[derive(Clone, Debug)]
pub struct Stopped {
    pub node: String,
    pub pid: i32,
    /// Whether it exited by itself within the grace period (drained); `false`: it was killed.
    pub drained: bool,
    /// From SIGTERM until the process was gone.
    pub took: Duration,
}

/// A node's new ztunnel started and ready ([`start`]).
#[derive(Clone, Debug)]
pub struct Started {
    pub pid: i32,
    /// The binary it runs.
    pub binary: PathBuf,
    /// From its start until it was ready and every ztunnel in sync.
    pub took: Duration,
}

/// What one node's rollover did.
#[derive(Clone, Debug)]
pub struct Rollover {
    /// `None`: no ztunnel ran on the node (it had crashed or been stopped), so only a start.
    pub stopped: Option<Stopped>,
    pub started: Started,
}

impl std::fmt::Display for Rollover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let new = &self.started;
        match &self.stopped {
            Some(old) => write!(
                f,
                "ztunnel on {}: pid {} {} after {:.1}s; ",
                old.node,
                old.pid,
                if old.drained {
                    "drained and exited"
                } else {
                    "killed at the grace period"
                },
                old.took.as_secs_f64(),
            )?,
            None => write!(f, "ztunnel was not running; ")?,
        }
        write!(
            f,
            "pid {} ({}) ready after {:.1}s",
            new.pid,
            new.binary.display(),
            new.took.as_secs_f64(),
        )
    }
}

/// The running ztunnel of `node` (the newest process of that name).
fn running(state: &LabState, node: &str) -> Result<ProcessRecord, LabError> {
    let name = mesh::ztunnel_name(node);
    state
        .processes
        .iter()
        .rev()
        .find(|p| p.name == name)
        .filter(|p| process::is_alive(p))
        .cloned()
        .ok_or_else(|| error(format!("{name} is not running")))
}

/// Stops `node`'s running ztunnel as the kubelet stops a container: SIGTERM, up to `grace`
/// to drain and exit, then SIGKILL. Its pods stay captured with nobody serving the capture
/// until a new one starts (eBPF: their flows dropped; nft: refused).
pub fn stop(state: &LabState, node: &str, grace: Duration) -> Result<Stopped, LabError> {
    let record = running(state, node)?;
    let began = Instant::now();
    let _ = kill(Pid::from_raw(record.pid), Signal::SIGTERM);
    while process::is_alive(&record) && began.elapsed() < grace {
        std::thread::sleep(Duration::from_millis(20));
    }
    let drained = !process::is_alive(&record);
    if !drained {
        tracing::warn!(
            pid = record.pid,
            "ztunnel outlived its grace period, killing"
        );
        process::kill_and_wait(&record);
    }
    Ok(Stopped {
        node: node.to_string(),
        pid: record.pid,
        drained,
        took: began.elapsed(),
    })
}

/// The mesh options to start `node`'s new ztunnel with: the lab's, with the binary of
/// `bin_dir` if given (an "upgrade" to another build).
fn options(state: &LabState, bin_dir: Option<&Path>) -> Result<MeshOptions, LabError> {
    let mut opts = (state.mesh.clone()).ok_or_else(|| error("the lab runs without the mesh"))?;
    if let Some(dir) = bin_dir {
        if !dir.join("ztunnel").is_file() {
            return Err(error(format!("{} has no ztunnel binary", dir.display())));
        }
        opts.bin_dir = dir.to_path_buf();
    }
    Ok(opts)
}

/// Starts `node`'s ztunnel again after [`stop`], from `bin_dir` (default the lab's
/// binaries), and waits until it is ready and every ztunnel in sync.
pub fn start(lab: &mut Lab, node: &str, bin_dir: Option<&Path>) -> Result<Started, LabError> {
    let info = (lab.state().node(node).cloned()).ok_or_else(|| error(format!("no node {node}")))?;
    let opts = options(lab.state(), bin_dir)?;
    if running(lab.state(), node).is_ok() {
        return Err(error(format!(
            "{} still runs: stop it first",
            mesh::ztunnel_name(node)
        )));
    }
    let began = Instant::now();
    mesh::start_ztunnel(lab, &opts, &info)?;
    let new = running(lab.state(), node)?;
    mesh::wait_ready(&info, READY_TIMEOUT)?;
    mesh::wait_synced(lab.state(), READY_TIMEOUT)?;
    Ok(Started {
        pid: new.pid,
        binary: opts.bin_dir.join("ztunnel"),
        took: began.elapsed(),
    })
}

/// Rolls `node`'s ztunnel of a lab this process owns over: [`stop`] (if it runs), then
/// [`start`].
pub fn restart(
    lab: &mut Lab,
    node: &str,
    bin_dir: Option<&Path>,
    grace: Duration,
) -> Result<Rollover, LabError> {
    options(lab.state(), bin_dir)?;
    let stopped = running(lab.state(), node)
        .is_ok()
        .then(|| stop(lab.state(), node, grace))
        .transpose()?;
    let started = start(lab, node, bin_dir)?;
    Ok(Rollover { stopped, started })
}

/// [`restart`] for lab `id` run by another process (`amesh-lab up`'s keeper): the new ztunnel
/// is recorded in the lab's state, so `amesh-lab down` stops it.
pub fn restart_detached(
    id: &LabId,
    node: &str,
    bin_dir: Option<&Path>,
    grace: Duration,
) -> Result<Rollover, LabError> {
    let mut state = LabState::load(id)?;
    let info = (state.node(node).cloned()).ok_or_else(|| error(format!("no node {node}")))?;
    let opts = options(&state, bin_dir)?;
    let stopped = running(&state, node)
        .is_ok()
        .then(|| stop(&state, node, grace))
        .transpose()?;
    let began = Instant::now();
    let name = mesh::ztunnel_name(node);
    let (netns, cmd) = mesh::ztunnel_command(&state, &opts, &info)?;
    let log = process::log_file(&state.run_dir, &name);
    // The child outlives this command, as the keeper's processes do; init reaps it.
    let (_child, record) = process::spawn_in_netns(&name, &netns, cmd, &log, None)?;
    state.processes.push(record.clone());
    state.save()?;
    mesh::wait_ready(&info, READY_TIMEOUT)?;
    mesh::wait_synced(&state, READY_TIMEOUT)?;
    let started = Started {
        pid: record.pid,
        binary: opts.bin_dir.join("ztunnel"),
        took: began.elapsed(),
    };
    Ok(Rollover { stopped, started })
}
