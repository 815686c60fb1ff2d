//! Harness for the end-to-end scenarios: a lab with the mesh from a fixture folder, helpers to
//! talk from pods and to wait for config to take effect, and a lock so scenarios run one at a
//! time (each starts a cluster of processes; on two cores they would starve each other).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use lab;

pub mod attacker;
pub mod dns;
pub mod health;
pub mod http;
pub mod l7client;
pub mod policies;
pub mod probe;
use lab::mesh::MeshOptions;
use lab::{Lab, LabOptions};

static SERIAL: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

/// A running lab with the mesh; torn down on drop (also when the test fails).
pub struct MeshLab {
    pub lab: Lab,
    _serial: parking_lot::MutexGuard<'static, ()>,
}

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// The `amesh` CLI binary cargo built beside the lab's (`cargo build --bins`).
pub fn amesh_binary() -> PathBuf {
    let lab = lab::cluster::find_binary().expect("amesh-lab binary (cargo build --bins)");
    let amesh = lab.with_file_name("amesh");
    assert!(
        amesh.exists(),
        "{} is missing: run `cargo build --bins` first",
        amesh.display()
    );
    amesh
}

/// Capture backend under test: `CAPTURE_MODE`, so CI can run the suite per mode. Unset, the
/// lab leaves it unset too and ztunnel picks eBPF, which this machine's kernel supports (the
/// checks of `capture.rs` would fail if it fell back to nft).
pub fn capture_mode() -> String {
    std::env::var("CAPTURE_MODE")
        .ok()
        .filter(|m| !m.is_empty() && m != "auto")
        .unwrap_or_else(|| "ebpf".into())
}

impl MeshLab {
    pub fn up(fixture_name: &str, nodes: usize) -> MeshLab {
        MeshLab::up_with(fixture_name, nodes, |_| {})
    }

    /// A lab of `examples/<name>`, the manifests users read (bookinfo with its waypoint).
    pub fn up_example(name: &str, nodes: usize) -> MeshLab {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../examples")
            .join(name);
        MeshLab::up_dir(&dir, nodes)
    }

    /// A lab of the manifests in `dir`.
    pub fn up_dir(dir: &std::path::Path, nodes: usize) -> MeshLab {
        MeshLab::up_dir_with(dir, nodes, |_| {})
    }

    /// Like [`MeshLab::up_dir`], with the mesh's options changed by `tweak` (the controller's
    /// graph page on).
    pub fn up_dir_with(
        dir: &std::path::Path,
        nodes: usize,
        tweak: impl FnOnce(&mut MeshOptions),
    ) -> MeshLab {
        let serial = SERIAL.lock();
        let _ = tracing_subscriber::fmt().with_test_writer().try_init();
        let binary = lab::cluster::find_binary().expect("amesh-lab binary (cargo build --bins)");
        let mut mesh = MeshOptions::beside(&binary);
        tweak(&mut mesh);
        let options = LabOptions {
            mesh: Some(mesh),
            binary: Some(binary),
            startup_timeout: Duration::from_secs(30),
            ..LabOptions::default()
        };
        let lab = Lab::up(dir, nodes, options).expect("lab up");
        MeshLab {
            lab,
            _serial: serial,
        }
    }

    /// The Prometheus text of waypoint `namespace/gateway` (its pod's :15020).
    pub fn waypoint_metrics(&self, namespace: &str, gateway: &str) -> String {
        let pod = lab::waypoints::pod(self.lab.state(), namespace, gateway).expect("waypoint pod");
        let addr = SocketAddr::new(pod.ip.into(), 15020);
        lab::netns::run_in(&pod.netns, move || lab::mesh::http_get(addr, "/metrics"))
            .expect("enter the waypoint's netns")
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    /// Like [`MeshLab::up`], with the lab's options changed by `tweak` (a dual-stack lab).
    pub fn up_with(
        fixture_name: &str,
        nodes: usize,
        tweak: impl FnOnce(&mut LabOptions),
    ) -> MeshLab {
        let serial = SERIAL.lock();
        let _ = tracing_subscriber::fmt().with_test_writer().try_init();
        let binary = lab::cluster::find_binary().expect("amesh-lab binary (cargo build --bins)");
        let options = LabOptions {
            mesh: Some(MeshOptions::beside(&binary)),
            binary: Some(binary),
            startup_timeout: Duration::from_secs(20),
            ..LabOptions::default()
        };
        let mut options = options;
        tweak(&mut options);
        let lab = Lab::up(&fixture(fixture_name), nodes, options).expect("lab up");
        MeshLab {
            lab,
            _serial: serial,
        }
    }

    pub fn ip(&self, pod: &str) -> IpAddr {
        self.lab.pod(pod).expect("pod").ip.into()
    }

    /// The lab pod whose name starts with `prefix` (Deployments' pods get a suffix): its name
    /// and address.
    pub fn pod_prefixed(&self, prefix: &str) -> (String, IpAddr) {
        let p = self
            .lab
            .state()
            .pods
            .iter()
            .find(|p| p.name.starts_with(prefix))
            .unwrap_or_else(|| panic!("no pod {prefix}*"));
        (p.name.clone(), p.ip.into())
    }

    pub fn vip(&self, service: &str) -> IpAddr {
        self.lab
            .state()
            .services
            .iter()
            .find(|s| s.name == service)
            .and_then(|s| s.vip)
            .expect("service VIP")
            .into()
    }

    pub fn node(&self, name: &str) -> lab::NodeInfo {
        self.lab
            .state()
            .nodes
            .iter()
            .find(|n| n.name == name)
            .cloned()
            .expect("node")
    }

    /// Sends `signal` (`KILL`, `TERM`) to the newest lab process named `name` (a restarted
    /// process has a record of its own); returns its pid.
    pub fn signal(&self, name: &str, signal: &str) -> i32 {
        let pid = self.pid(name);
        let status = std::process::Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} {pid} failed");
        if signal == "KILL" {
            // SIGKILL is delivered at once but a process with many threads takes a moment to
            // die: until it has, its listening sockets are still bound, and a restart at once
            // would find its address in use.
            wait_for(
                &format!("{name} (pid {pid}) to die after SIGKILL"),
                Duration::from_secs(10),
                || is_gone(pid),
            );
        }
        pid
    }

    /// The pid of the newest lab process named `name` (`ztunnel node1`).
    pub fn pid(&self, name: &str) -> i32 {
        self.lab
            .state()
            .processes
            .iter()
            .rev()
            .find(|p| p.name == name)
            .map(|p| p.pid)
            .unwrap_or_else(|| panic!("no lab process named {name:?}"))
    }

    /// The names of the authorization policies `node`'s ztunnel holds now (its admin
    /// `/config_dump`, which listens on the loopback of ztunnel's pod).
    pub fn ztunnel_policies(&self, node: &str) -> Vec<String> {
        let pod = self.node(node).ztunnel.expect("the node's ztunnel pod");
        let admin: SocketAddr = "127.0.0.1:15000".parse().unwrap();
        let body = lab::netns::run_in(&pod.netns, move || {
            lab::mesh::http_get(admin, "/config_dump")
        })
        .expect("enter ztunnel's netns")
        .map(|(_, body)| body)
        .unwrap_or_default();
        let dump: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        dump["policies"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["name"].as_str().map(str::to_string))
            .collect()
    }

    /// Kills waypoint `namespace/gateway` (SIGKILL) and waits until it is gone; its pod is
    /// marked not Ready, as the kubelet would.
    pub fn kill_waypoint(&mut self, namespace: &str, gateway: &str) {
        lab::waypoints::kill(&mut self.lab, namespace, gateway).expect("kill the waypoint");
    }

    /// Starts killed waypoint `namespace/gateway` again and waits until it is ready, its pod
    /// Ready and every ztunnel synced.
    pub fn restart_waypoint(&mut self, namespace: &str, gateway: &str) {
        lab::waypoints::restart(&mut self.lab, namespace, gateway).expect("restart the waypoint");
    }

    /// The pid of waypoint `namespace/gateway`.
    pub fn waypoint_pid(&self, namespace: &str, gateway: &str) -> i32 {
        self.pid(&lab::waypoints::process_name(namespace, gateway))
    }

    /// The pid of `node`'s ztunnel.
    pub fn ztunnel_pid(&self, node: &str) -> i32 {
        self.pid(&lab::mesh::ztunnel_name(node))
    }

    /// An HTTP GET from `pod`; the echo app's answer.
    pub fn http(&self, pod: &str, addr: SocketAddr) -> Result<lab::echo::EchoReply, String> {
        lab::mesh::http_from(&self.lab, pod, addr, "/")
    }

    /// A raw TCP echo from `pod`.
    pub fn echo(&self, pod: &str, addr: SocketAddr, msg: &[u8]) -> Result<Vec<u8>, String> {
        self.lab
            .tcp_echo(pod, addr, msg, Duration::from_secs(5))
            .map_err(|e| e.to_string())
    }

    /// Applies a manifest and waits until `check` holds (config reaches ztunnel by its file
    /// watcher, so the effect is asynchronous); panics with `what` after 10 s.
    pub fn apply_and_wait(&self, name: &str, yaml: &str, what: &str, check: impl Fn() -> bool) {
        lab::mesh::apply(&self.lab, name, yaml).expect("apply manifest");
        wait_for(what, Duration::from_secs(10), check);
    }
}

/// Whether process `pid` has exited with every thread, so its descriptors are closed: gone,
/// or a zombie with no thread left. (A killed process's leader turns zombie first; its other
/// threads, which share the descriptor table, may still be exiting.)
pub fn is_gone(pid: i32) -> bool {
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| {
        s.rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().next())
            == Some("Z")
    });
    match zombie {
        Err(_) => true,
        Ok(false) => false,
        Ok(true) => std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|tasks| tasks.count() <= 1)
            .unwrap_or(true),
    }
}

/// Polls `check` every 100 ms until it holds; panics naming `what` at the deadline.
pub fn wait_for(what: &str, limit: Duration, check: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The sum of the samples of metric `name` whose line contains every one of `labels`
/// (`key="value"` strings), in a Prometheus text exposition.
pub fn metric_sum(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    let head = format!("{name}{{");
    metrics
        .lines()
        .filter(|l| l.starts_with(&head))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

pub fn addr(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}
