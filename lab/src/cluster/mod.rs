//! A lab cluster from a folder of manifests: `Lab::up` builds it, `Lab::down` (or dropping the
//! `Lab`) removes everything it made, `Lab::detach` leaves it running for other processes
//! (`amesh-lab status`, `exec`, `down`).

mod error;
pub mod expand;
pub mod generated;
mod input;

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

pub use self::error::LabError;
use crate::client::{self, ClientError};
use crate::hooks;
use crate::netns;
use crate::plan::{AddressPlan, LabId};
use crate::process::{self, ProcessRecord};
use crate::reap;
use crate::rundir::RunDir;
use crate::state::{LabState, PodInfo};
use crate::topology;

/// How long a stopping process gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

/// How to bring a lab up.
#[derive(Clone, Debug)]
pub struct LabOptions {
    /// The lab's id; a random unused one when `None`.
    pub id: Option<LabId>,
    /// The `amesh-lab` binary that runs pod apps and the keeper; found next to the current
    /// executable (or via `AMESH_LAB_BIN`) when `None`.
    pub binary: Option<PathBuf>,
    /// How long each process may take to start listening.
    pub startup_timeout: Duration,
    /// Run the mesh (ztunnel per node, amesh-cni per pod); `None` for plain pods.
    pub mesh: Option<crate::mesh::MeshOptions>,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            id: None,
            binary: None,
            startup_timeout: Duration::from_secs(10),
            mesh: None,
        }
    }
}

/// A running lab owned by this process. Dropping it tears the lab down.
#[derive(Debug)]
pub struct Lab {
    /// Holds the lab's lock while this process owns the lab; `None` once detached or torn down
    /// (then dropping does nothing).
    run: Option<RunDir>,
    state: LabState,
    /// Handles of the processes this process started, by name, to reap them on teardown.
    children: Vec<(String, Child)>,
    binary: PathBuf,
    startup_timeout: Duration,
}

impl Lab {
    /// Brings a lab up from the manifests in `manifests_dir` with `nodes` nodes: reaps crashed
    /// labs, claims an id and an address range, builds the network, writes the generated
    /// manifests, creates every pod and starts its echo app. On error, everything built so far
    /// is removed again.
    pub fn up(manifests_dir: &Path, nodes: usize, options: LabOptions) -> Result<Lab, LabError> {
        let binary = match options.binary {
            Some(b) => b,
            None => find_binary()?,
        };
        let input = input::load(manifests_dir)?;
        reap::cleanup_stale()?;
        let run = RunDir::create(options.id)?;
        let plan = run.plan();
        let id = run.id().clone();
        let state = LabState {
            index: plan.index(),
            run_dir: run.path().to_path_buf(),
            manifests_dir: run.manifests_dir(),
            root_netns: id.root_netns(),
            root_ip: plan.root_ip(),
            id,
            nodes: Vec::new(),
            pods: Vec::new(),
            services: Vec::new(),
            processes: Vec::new(),
            detached: false,
            mesh: options.mesh,
        };
        let mut lab = Lab {
            run: Some(run),
            state,
            children: Vec::new(),
            binary,
            startup_timeout: options.startup_timeout,
        };
        // From here on an error drops `lab`, which removes whatever was built.
        lab.build(manifests_dir, &input, nodes)?;
        Ok(lab)
    }

    fn build(&mut self, dir: &Path, input: &expand::Input, nodes: usize) -> Result<(), LabError> {
        let plan = self.plan();
        let id = self.state.id.clone();
        let expanded = expand::expand(input, nodes, &plan)?;
        self.state.save()?;
        topology::create_root(&id, &plan)?;
        for n in 1..=nodes {
            let node = topology::add_node(&id, &plan, n)?;
            self.state.nodes.push(node.clone());
            self.state.save()?;
            hooks::on_node_created(self, &node)?;
        }
        topology::route_between_nodes(&self.state.nodes)?;
        self.state.services = expanded.service_infos.clone();
        generated::write(dir, &expanded, &self.state.manifests_dir)?;
        hooks::on_manifests_written(self)?;
        // Network first (what the CNI does), then the app (the container), as a kubelet does.
        let mut waiting = Vec::new();
        for planned in &expanded.pods {
            let node = self.state.nodes[planned.node - 1].clone();
            let net = topology::add_pod(&id, &node, &planned.namespace, &planned.name, planned.ip)?;
            let pod = PodInfo {
                name: planned.name.clone(),
                namespace: planned.namespace.clone(),
                uid: planned.uid.clone(),
                node: node.name.clone(),
                netns: net.netns,
                ip: planned.ip,
                veth: net.veth,
                service_account: planned.service_account.clone(),
                labels: planned.labels.clone(),
                ports: planned.ports.clone(),
            };
            self.state.pods.push(pod.clone());
            self.state.save()?;
            hooks::on_pod_created(self, &pod)?;
            let name = self.start_echo(&pod, &planned.version)?;
            waiting.push((name, pod.ports.clone()));
        }
        for (name, ports) in waiting {
            self.wait_listening(&name, &ports)?;
        }
        hooks::on_lab_ready(self)?;
        self.state.save()?;
        Ok(())
    }

    fn start_echo(&mut self, pod: &PodInfo, version: &str) -> Result<String, LabError> {
        let mut cmd = Command::new(&self.binary);
        let ports: Vec<String> = pod.ports.iter().map(u16::to_string).collect();
        cmd.args(["echo", "--pod", &pod.name, "--namespace", &pod.namespace])
            .args(["--version", version, "--node", &pod.node]);
        if !ports.is_empty() {
            cmd.args(["--ports", &ports.join(",")]);
        }
        let name = format!("echo {}", pod.key());
        self.spawn(&name, &pod.netns.clone(), cmd)?;
        Ok(name)
    }

    /// Starts a process inside `netns` and records it, so that teardown (and the reaping of a
    /// crashed lab) stops it. Its output goes to `<run dir>/logs/<name>.log`.
    pub fn spawn(
        &mut self,
        name: &str,
        netns: &str,
        cmd: Command,
    ) -> Result<ProcessRecord, LabError> {
        let file: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let log = self.state.run_dir.join("logs").join(format!("{file}.log"));
        let (child, record) = process::spawn_in_netns(name, netns, cmd, &log, None)?;
        self.children.push((name.to_string(), child));
        self.state.processes.push(record.clone());
        self.state.save()?;
        Ok(record)
    }

    /// Waits until the process started as `name` listens on all `ports`.
    pub fn wait_listening(&mut self, name: &str, ports: &[u16]) -> Result<(), LabError> {
        let timeout = self.startup_timeout;
        // The newest process of that name: a restarted one has a record of its own.
        let Some(record) = self
            .state
            .processes
            .iter()
            .rev()
            .find(|p| p.name == name)
            .cloned()
        else {
            return Ok(());
        };
        if let Some((_, child)) = self.children.iter_mut().rev().find(|(n, _)| n == name) {
            process::wait_listening(child, &record, ports, timeout)?;
        }
        Ok(())
    }

    pub fn id(&self) -> &LabId {
        &self.state.id
    }

    /// Everything about the lab, as `state.json` has it.
    pub fn state(&self) -> &LabState {
        &self.state
    }

    pub fn plan(&self) -> AddressPlan {
        // The index was validated when the run directory was claimed.
        AddressPlan::new(self.state.index).expect("lab index is valid")
    }

    pub fn run_dir(&self) -> &Path {
        &self.state.run_dir
    }

    /// The generated manifests folder (Pods with IPs, Services with VIPs, the rest as given).
    pub fn manifests_dir(&self) -> &Path {
        &self.state.manifests_dir
    }

    /// The `amesh-lab` binary the lab runs its processes with.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// A pod by `namespace/name`, or by a name unique across namespaces.
    pub fn pod(&self, name: &str) -> Result<&PodInfo, LabError> {
        Ok(self.state.pod(name)?)
    }

    /// Runs `f` on a thread inside the pod's netns.
    pub fn run_in_pod<T: Send, F: FnOnce() -> T + Send>(
        &self,
        pod: &str,
        f: F,
    ) -> Result<T, LabError> {
        let netns = self.pod(pod)?.netns.clone();
        Ok(netns::run_in(&netns, f)?)
    }

    /// A TCP connection from inside `pod` to `addr` (read/write timeouts set to `timeout`).
    pub fn connect(
        &self,
        pod: &str,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<TcpStream, LabError> {
        let netns = self.pod(pod)?.netns.clone();
        Ok(client::connect_in(&netns, addr, timeout)?)
    }

    /// A raw TCP echo of `msg` from inside `pod` to `addr`: returns what came back.
    pub fn tcp_echo(
        &self,
        pod: &str,
        addr: SocketAddr,
        msg: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, LabError> {
        let mut s = self.connect(pod, addr, timeout)?;
        client::tcp_echo(&mut s, msg).map_err(|e: ClientError| e.into())
    }

    /// Leaves the lab running after this process exits: a keeper process in the root netns
    /// takes over the lab's lock, and `amesh-lab down` removes the lab later.
    pub fn detach(mut self) -> Result<LabState, LabError> {
        let Some(run) = self.run.as_ref() else {
            return Ok(self.state.clone());
        };
        let mut cmd = Command::new(&self.binary);
        cmd.args(["keep", "--id", self.state.id.as_str()]);
        let log = self.state.run_dir.join("logs").join("keeper.log");
        let (_child, record) = process::spawn_in_netns(
            "keeper",
            &self.state.root_netns,
            cmd,
            &log,
            Some(run.lock_fd()),
        )?;
        self.state.processes.push(record);
        self.state.detached = true;
        self.state.save()?;
        // Our lock descriptor closes with `run`; the keeper's copy keeps the lock. Child handles
        // are dropped without killing: the processes live on.
        self.run = None;
        self.children.clear();
        Ok(self.state.clone())
    }

    /// Tears the lab down: stops its processes, deletes its namespaces (and with them every
    /// interface), removes its run directory.
    pub fn down(mut self) -> Result<(), LabError> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<(), LabError> {
        let Some(run) = self.run.take() else {
            return Ok(());
        };
        hooks::on_teardown(&self.state);
        process::terminate(&self.state.processes, STOP_GRACE);
        for (_, child) in &mut self.children {
            // Already stopped above; this reaps them (kill fails harmlessly on the dead).
            let _ = child.kill();
            let _ = child.wait();
        }
        self.children.clear();
        let network = reap::remove_network(&self.state.id);
        let dir = run.remove();
        network?;
        dir?;
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            tracing::error!(lab = %self.state.id, error = %e, "lab teardown failed; `amesh-lab down --all` cleans up");
        }
    }
}

/// The `amesh-lab` binary: `AMESH_LAB_BIN`, this executable if it is amesh-lab, or an
/// `amesh-lab` next to this executable or one directory up (tests run from `target/*/deps/`).
pub fn find_binary() -> Result<PathBuf, LabError> {
    if let Some(p) = std::env::var_os("AMESH_LAB_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|e| LabError::NoBinary(e.to_string()))?;
    if exe.file_name().is_some_and(|n| n == "amesh-lab") {
        return Ok(exe);
    }
    let mut tried = Vec::new();
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join("amesh-lab");
        if candidate.is_file() {
            return Ok(candidate);
        }
        tried.push(candidate.display().to_string());
    }
    Err(LabError::NoBinary(format!("tried {}", tried.join(", "))))
}
