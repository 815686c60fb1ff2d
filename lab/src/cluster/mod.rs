//! A lab cluster from a folder of manifests: `Lab::up` builds it, `Lab::down` (or dropping the
//! `Lab`) removes everything it made, `Lab::detach` leaves it running for other processes
//! (`amesh-lab status`, `exec`, `down`).

mod error;
pub mod expand;
pub mod generated;
mod input;
pub mod waypoint;

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
use crate::runtime;
use crate::state::{LabState, PodInfo, WaypointInfo};
use crate::topology;

/// Name of the cluster DNS stand-in in the lab's process records.
pub const CLUSTER_DNS: &str = "cluster-dns";

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
    pub mesh: Option<crate::mesh_options::MeshOptions>,
    /// Give nodes and pods IPv6 addresses besides IPv4 ones.
    pub dual_stack: bool,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            id: None,
            binary: None,
            startup_timeout: Duration::from_secs(10),
            mesh: None,
            dual_stack: false,
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
    /// The Pod objects as the API server holds them (status written as pods start).
    api_pods: Vec<k8s_openapi::api::core::v1::Pod>,
    /// The Gateways as the API server holds them (a waypoint's status written once its pod is
    /// Ready).
    api_gateways: Vec<serde_yaml::Value>,
    /// Called after each CNI ADD that said "try again" (see [`Lab::create_pod_while_retrying`]).
    on_retry: Option<RetryHook>,
}

/// A pod whose container was started, to wait for before the pod is Ready.
struct Starting {
    /// `namespace/name`.
    pod: String,
    container: Container,
}

/// How the kubelet learns that a container is ready.
enum Container {
    /// The lab's echo app: ready once it listens on all its ports.
    Listening { process: String, ports: Vec<u16> },
    /// A container with a readiness probe (a waypoint).
    Probe(crate::probe::HttpProbe),
}

/// What a test does while a pod's ADD is being retried.
type RetryFn = dyn FnMut(&mut Lab, &runtime::CniError) + Send;

struct RetryHook(Box<RetryFn>);

impl std::fmt::Debug for RetryHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RetryHook")
    }
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
            dual_stack: options.dual_stack,
            waypoints: Vec::new(),
        };
        let mut lab = Lab {
            run: Some(run),
            state,
            children: Vec::new(),
            binary,
            startup_timeout: options.startup_timeout,
            api_pods: Vec::new(),
            api_gateways: Vec::new(),
            on_retry: None,
        };
        // From here on an error drops `lab`, which removes whatever was built.
        lab.build(manifests_dir, &input, nodes)?;
        Ok(lab)
    }

    fn build(&mut self, dir: &Path, input: &expand::Input, nodes: usize) -> Result<(), LabError> {
        let plan = self.plan();
        let id = self.state.id.clone();
        let expanded = expand::expand(input, nodes, &plan, self.state.mesh.is_some())?;
        self.state.save()?;
        let dual_stack = self.state.dual_stack;
        topology::create_root(&id, &plan, dual_stack)?;
        for n in 1..=nodes {
            let node = topology::add_node(&id, &plan, n, dual_stack)?;
            self.state.nodes.push(node);
            self.state.save()?;
        }
        topology::route_between_nodes(&self.state.nodes)?;
        self.state.services = expanded.service_infos.clone();
        self.state.waypoints = (expanded.waypoints.iter())
            .map(|w| WaypointInfo {
                namespace: w.namespace.clone(),
                gateway: w.name.clone(),
            })
            .collect();
        // What the API server holds once everything is scheduled: pods without status.
        self.api_gateways = generated::write(dir, &expanded, &self.state.manifests_dir)?;
        self.api_pods = expanded.pods.iter().map(|p| p.pod.clone()).collect();
        self.start_cluster_dns()?;
        hooks::on_manifests_written(self)?;
        for node in self.state.nodes.clone() {
            let plugin = hooks::node_cni_plugin(&self.state, &node);
            runtime::write_conflist(&self.state, &node, plugin.as_ref())
                .map_err(|e| LabError::Runtime(format!("node {}: {e}", node.name)))?;
        }
        // Each node's kubelet starts its pods in order: ztunnel's first (its ADD must pass
        // without a ztunnel), kube-system's, then the rest. Waypoints come last, once the
        // app's pods are Ready and known to every ztunnel, as when a user deploys a waypoint
        // for a running app: the waypoint's first config then has every endpoint healthy (it
        // has no endpoint view the lab could wait on).
        let (waypoints, others): (Vec<_>, Vec<_>) =
            (expanded.pods.iter()).partition(|p| p.role == expand::PodRole::Waypoint);
        for phase in [others, waypoints] {
            if phase.is_empty() {
                continue;
            }
            let mut waiting = Vec::new();
            for planned in phase {
                if let Some(starting) = self.start_pod(planned)? {
                    waiting.push(starting);
                }
            }
            for starting in waiting {
                self.wait_started(starting)?;
            }
            self.state.save()?;
            hooks::on_lab_ready(self)?;
        }
        Ok(())
    }

    /// Starts one pod as a kubelet does: the sandbox, the node's CNI chain (retried, as the
    /// kubelet retries, while a plugin says "try again"), the status with the IP IPAM gave,
    /// then its container. Returns the container to wait for, unless it is ready already.
    fn start_pod(&mut self, planned: &expand::PlannedPod) -> Result<Option<Starting>, LabError> {
        let node = self.state.nodes[planned.node - 1].clone();
        let id = self.state.id.clone();
        let runtime = runtime::for_node(&self.state, &node)
            .map_err(|e| LabError::Runtime(format!("node {}: {e}", node.name)))?;
        let netns = topology::create_sandbox(&id, &planned.namespace, &planned.name)?;
        let sandbox = runtime::Sandbox {
            namespace: planned.namespace.clone(),
            name: planned.name.clone(),
            uid: planned.uid.clone(),
            netns: netns.clone(),
        };
        let attached = self.add_with_retries(&runtime, &sandbox)?;
        let pod = PodInfo {
            name: planned.name.clone(),
            namespace: planned.namespace.clone(),
            uid: planned.uid.clone(),
            node: node.name.clone(),
            netns,
            ip: attached.ip,
            ip6: attached.ip6,
            veth: attached.host_veth,
            service_account: planned.service_account.clone(),
            labels: planned.labels.clone(),
            ports: planned.ports.clone(),
        };
        runtime::write_resolv_conf(&self.state, &pod)
            .map_err(|e| LabError::Runtime(format!("pod {}: resolv.conf: {e}", pod.key())))?;
        self.state.pods.push(pod.clone());
        self.state.save()?;
        // Only now does the API learn the pod's address.
        self.write_status(&pod, false)?;
        let container = match hooks::on_pod_sandbox_ready(self, &pod, planned.role)? {
            hooks::Container::Ready => {
                self.set_ready(&pod.key())?;
                return Ok(None);
            }
            hooks::Container::Probe(probe) => Container::Probe(probe),
            hooks::Container::Echo => Container::Listening {
                process: self.start_echo(&pod, &planned.version, &planned.env)?,
                ports: pod.ports.clone(),
            },
        };
        Ok(Some(Starting {
            pod: pod.key(),
            container,
        }))
    }

    /// Waits until a started container is ready (its ports listen, or its readiness probe
    /// passes), then marks its pod Ready.
    fn wait_started(&mut self, starting: Starting) -> Result<(), LabError> {
        match starting.container {
            Container::Listening { process, ports } => self.wait_listening(&process, &ports)?,
            Container::Probe(probe) => probe.wait()?,
        }
        self.set_ready(&starting.pod)
    }

    /// CNI ADD; on "try again" the sandbox's network is torn down (DEL) and ADD is retried
    /// with backoff, as a kubelet does, until the startup timeout (three times over).
    fn add_with_retries(
        &mut self,
        runtime: &runtime::NodeRuntime,
        sandbox: &runtime::Sandbox,
    ) -> Result<runtime::Attached, LabError> {
        let deadline = std::time::Instant::now() + self.startup_timeout * 3;
        let mut backoff = Duration::from_millis(200);
        loop {
            match runtime.add(sandbox) {
                Ok(attached) => return Ok(attached),
                Err(e) if e.is_try_again() && std::time::Instant::now() < deadline => {
                    tracing::info!(pod = %format!("{}/{}", sandbox.namespace, sandbox.name), "CNI ADD: {e}; retrying in {backoff:?}");
                    let _ = runtime.del(sandbox);
                    if let Some(mut hook) = self.on_retry.take() {
                        (hook.0)(self, &e);
                        self.on_retry = Some(hook);
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Err(e) => {
                    let _ = runtime.del(sandbox);
                    return Err(LabError::Runtime(e.to_string()));
                }
            }
        }
    }

    /// Writes `pod`'s status into the API objects (the generated pods file), as the kubelet
    /// updates it: running with its IP, and Ready when `ready`.
    fn write_status(&mut self, pod: &PodInfo, ready: bool) -> Result<(), LabError> {
        let host = self
            .state
            .node(&pod.node)
            .map(|n| n.ip)
            .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED);
        for api in self.api_pods.iter_mut() {
            if api.metadata.namespace.as_deref() == Some(pod.namespace.as_str())
                && api.metadata.name.as_deref() == Some(pod.name.as_str())
            {
                api.status = Some(expand::pod_status(pod.ip, pod.ip6, host, ready));
            }
        }
        let pods: Vec<&k8s_openapi::api::core::v1::Pod> = self.api_pods.iter().collect();
        generated::write_pods(&self.state.manifests_dir, &pods)?;
        hooks::on_pod_status(self)
    }

    fn set_ready(&mut self, key: &str) -> Result<(), LabError> {
        self.set_pod_ready(key, true)
    }

    /// Writes pod `key`'s Ready condition, as the kubelet does when its readiness changes (a
    /// container that crashed, or came back); a waypoint's Gateway is programmed once its pod
    /// is first Ready, as istiod does.
    pub fn set_pod_ready(&mut self, key: &str, ready: bool) -> Result<(), LabError> {
        let pod = self.state.pod(key)?.clone();
        self.write_status(&pod, ready)?;
        if ready {
            self.program_gateway(&pod)?;
        }
        Ok(())
    }

    /// If `pod` is a waypoint's: the Gateway's status gets its Service's address and
    /// `Programmed` (once: a Gateway stays programmed while its pod restarts).
    fn program_gateway(&mut self, pod: &PodInfo) -> Result<(), LabError> {
        let Some(w) = self.state.waypoints.iter().find(|w| w.runs_in(pod)) else {
            return Ok(());
        };
        let Some(vip) = self
            .state
            .service(&w.namespace, &w.gateway)
            .and_then(|s| s.vip)
        else {
            return Ok(());
        };
        let Some(gw) = generated::find_gateway(&mut self.api_gateways, &w.namespace, &w.gateway)
        else {
            return Ok(());
        };
        if gw["status"]["conditions"].as_sequence().is_some() {
            return Ok(());
        }
        generated::set_programmed(gw, &vip.to_string());
        generated::write_gateways(&self.state.manifests_dir, &self.api_gateways)?;
        Ok(())
    }

    /// Records where `node`'s ztunnel pod is; returns the node as it is now.
    pub fn set_node_ztunnel(
        &mut self,
        node: &str,
        ztunnel: crate::state::ZtunnelPod,
    ) -> Result<crate::state::NodeInfo, LabError> {
        let Some(info) = self.state.nodes.iter_mut().find(|n| n.name == node) else {
            return Err(LabError::Runtime(format!("no node {node}")));
        };
        info.ztunnel = Some(ztunnel);
        let info = info.clone();
        self.state.save()?;
        Ok(info)
    }

    /// Like [`Lab::create_pod`], calling `hook` each time the pod's CNI ADD said "try again"
    /// (before the next attempt): a test can bring ztunnel back meanwhile.
    pub fn create_pod_while_retrying(
        &mut self,
        pod: k8s_openapi::api::core::v1::Pod,
        hook: impl FnMut(&mut Lab, &runtime::CniError) + Send + 'static,
    ) -> Result<PodInfo, LabError> {
        self.on_retry = Some(RetryHook(Box::new(hook)));
        let created = self.create_pod(pod);
        self.on_retry = None;
        created
    }

    /// Creates a pod in the running lab, as `kubectl apply` of a Pod would: scheduled (on
    /// `spec.nodeName`, else node1), written to the API, started by its node. Its IP comes
    /// from the node's IPAM like every pod's.
    pub fn create_pod(
        &mut self,
        pod: k8s_openapi::api::core::v1::Pod,
    ) -> Result<PodInfo, LabError> {
        let plan = self.plan();
        let nodes = self.state.nodes.len();
        let input = expand::Input {
            pods: vec![pod],
            ..expand::Input::default()
        };
        let expanded = expand::expand(&input, nodes, &plan, false)?;
        // Only the one pod: the system objects `expand` adds already exist.
        let planned = expanded
            .pods
            .into_iter()
            .find(|p| input.pods[0].metadata.name.as_deref() == Some(p.name.as_str()))
            .ok_or_else(|| LabError::Runtime("the pod did not expand".into()))?;
        if self
            .state
            .pods
            .iter()
            .any(|p| p.namespace == planned.namespace && p.name == planned.name)
        {
            return Err(LabError::Runtime(format!(
                "pod {}/{} exists already",
                planned.namespace, planned.name
            )));
        }
        self.api_pods.push(planned.pod.clone());
        let pods: Vec<&k8s_openapi::api::core::v1::Pod> = self.api_pods.iter().collect();
        generated::write_pods(&self.state.manifests_dir, &pods)?;
        if let Some(starting) = self.start_pod(&planned)? {
            self.wait_started(starting)?;
        }
        hooks::on_lab_ready(self)?;
        Ok(self
            .state
            .pod(&format!("{}/{}", planned.namespace, planned.name))?
            .clone())
    }

    /// Starts the cluster's DNS stand-in on the root netns's address, port 53 (the
    /// nameserver of every pod's resolv.conf), and waits until it answers.
    fn start_cluster_dns(&mut self) -> Result<(), LabError> {
        let addr = SocketAddr::new(self.state.root_ip.into(), 53);
        let mut cmd = Command::new(&self.binary);
        cmd.arg("dns")
            .arg("--manifests")
            .arg(&self.state.manifests_dir)
            .arg("--listen")
            .arg(addr.to_string());
        self.spawn(CLUSTER_DNS, &self.state.root_netns.clone(), cmd)?;
        let root = self.state.root_netns.clone();
        let deadline = std::time::Instant::now() + self.startup_timeout;
        loop {
            let answered = netns::run_in(&root, move || {
                let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
                s.set_read_timeout(Some(Duration::from_millis(200))).ok()?;
                // A query for "x." (id 7): any answer means the server is up.
                let q = [0, 7, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'x', 0, 0, 1, 0, 1];
                s.send_to(&q, addr).ok()?;
                let mut buf = [0u8; 512];
                s.recv(&mut buf).ok()
            })?;
            if answered.is_some() {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                return Err(LabError::Runtime(format!(
                    "the cluster DNS on {addr} does not answer (see its log in the lab's logs/)"
                )));
            }
        }
    }

    /// Starts a pod's echo app with its containers' `env`: only the manifest configures it, so
    /// the echo app's variables in the lab's own environment are taken out first.
    fn start_echo(
        &mut self,
        pod: &PodInfo,
        version: &str,
        env: &[(String, String)],
    ) -> Result<String, LabError> {
        let mut cmd = Command::new(&self.binary);
        let ports: Vec<String> = pod.ports.iter().map(u16::to_string).collect();
        cmd.args(["echo", "--pod", &pod.name, "--namespace", &pod.namespace])
            .args(["--version", version, "--node", &pod.node])
            .arg("--resolv-conf")
            .arg(runtime::resolv_conf_path(pod));
        if !ports.is_empty() {
            cmd.args(["--ports", &ports.join(",")]);
        }
        for name in crate::echo::env::ALL {
            cmd.env_remove(name);
        }
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
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
        let log = process::log_file(&self.state.run_dir, name);
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
