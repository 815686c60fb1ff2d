//! One repetition: start the real `amesh-controller` on the manifests, connect one real xDS
//! client (with ztunnel's state store) per node, time until all of them hold the whole config,
//! read the controller's memory and CPU, kill it.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use amesh_proto::envoy::config::core::v3::Node;
use anyhow::Context;
use mesh::state::StateStore;
use mesh::xds::{self, XdsConfig, XdsHandle};
use serde::Serialize;

use crate::manifests::Shape;

/// What one repetition measured. Times are from the controller's spawn.
#[derive(Clone, Debug, Serialize)]
pub struct Run {
    /// The gRPC port accepted a connection.
    pub listening_secs: f64,
    /// The first client had every type ACKed.
    pub first_synced_secs: f64,
    /// Every client had every type ACKed and held all N workloads, S services, P policies.
    pub all_synced_secs: f64,
    /// Per node, in node order: when that client held the whole config.
    pub per_client_secs: Vec<f64>,
    /// Controller VmRSS right after the sync, KiB.
    pub rss_kib: u64,
    /// Controller VmHWM (peak RSS) at the same moment, KiB.
    pub peak_rss_kib: u64,
    /// Controller user + system CPU seconds from start to the sync.
    pub cpu_secs: f64,
    /// xDS responses the clients applied, all nodes and types together.
    pub responses_applied: u64,
}

/// Where the controller binary is and how long a repetition may take.
pub struct Setup<'a> {
    pub controller: &'a Path,
    pub manifests: &'a Path,
    pub shape: &'a Shape,
    pub timeout: Duration,
    pub work: &'a Path,
}

/// Kills the controller however the repetition ends.
struct Controller {
    child: Child,
    log: PathBuf,
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Controller {
    /// The controller's last lines of log, to explain a failure.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(20);
        lines[from..].join("\n")
    }

    /// Fails if the controller has exited.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            anyhow::bail!(
                "amesh-controller exited ({status}); last log lines:\n{}",
                self.log_tail()
            );
        }
        Ok(())
    }
}

/// Runs repetition `rep` (from 1) on `runtime`.
pub fn run(
    setup: &Setup<'_>,
    rep: usize,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<Run> {
    let rep_dir = setup.work.join(format!("rep-{rep}"));
    let ca_dir = rep_dir.join("ca");
    std::fs::create_dir_all(&ca_dir).with_context(|| format!("creating {}", ca_dir.display()))?;
    let nodes = setup.shape.node_names();
    let tokens_file = rep_dir.join("tokens");
    let tokens: Vec<String> = nodes.iter().map(|n| format!("bench-token-{n}")).collect();
    let lines: String = tokens
        .iter()
        .zip(&nodes)
        .map(|(t, n)| format!("{t} {n}\n"))
        .collect();
    std::fs::write(&tokens_file, lines)?;
    let addr = free_port()?;
    let log = rep_dir.join("controller.log");
    let log_file =
        std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;

    let mut command = Command::new(setup.controller);
    command
        .arg("--source=folder")
        .arg("--manifests")
        .arg(setup.manifests)
        .arg("--ca-dir")
        .arg(&ca_dir)
        .arg("--xds-addr")
        .arg(addr.to_string())
        .arg("--tokens")
        .arg(&tokens_file)
        .env(
            "RUST_LOG",
            std::env::var("AMESH_BENCH_CONTROLLER_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file);
    // The clock starts with the spawn.
    let start = Instant::now();
    let child = command
        .spawn()
        .with_context(|| format!("starting {}", setup.controller.display()))?;
    let mut controller = Controller { child, log };
    let pid = controller.child.id() as i32;
    let deadline = start + setup.timeout;

    // Wait for the port (5 ms steps) so the clients' first connect succeeds instead of
    // measuring their reconnect backoff.
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            break;
        }
        controller.check_alive()?;
        if Instant::now() > deadline {
            anyhow::bail!(
                "amesh-controller did not listen on {addr} within {:?}; last log lines:\n{}",
                setup.timeout,
                controller.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let listening = start.elapsed();

    let expected = (setup.shape.pods, setup.shape.services, setup.shape.policies);
    let outcome = runtime.block_on(async {
        let mut clients = Vec::new();
        for (node, token) in nodes.iter().zip(&tokens) {
            clients.push(Client::start(addr, node, token)?);
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        let waits = clients.iter().map(|c| c.wait_complete(start, expected));
        let result = tokio::time::timeout(remaining, futures::future::join_all(waits)).await;
        let responses: u64 = clients
            .iter()
            .map(|c| {
                c.handle
                    .status()
                    .types
                    .iter()
                    .map(|t| t.acks + t.nacks)
                    .sum::<u64>()
            })
            .sum();
        let describe: Vec<String> = clients.iter().map(|c| c.describe(expected)).collect();
        for c in clients {
            c.handle.shutdown().await;
        }
        match result {
            Ok(times) => anyhow::Ok((
                times.into_iter().collect::<anyhow::Result<Vec<_>>>()?,
                responses,
            )),
            Err(_) => anyhow::bail!(
                "not every client held the whole config within {:?}:\n{}",
                setup.timeout,
                describe.join("\n")
            ),
        }
    });
    let (times, responses_applied) = match outcome {
        Ok(v) => v,
        Err(e) => {
            controller.check_alive()?;
            return Err(e.context(format!(
                "controller log ({}) ends with:\n{}",
                controller.log.display(),
                controller.log_tail()
            )));
        }
    };
    controller.check_alive()?;
    let (rss_kib, peak_rss_kib) = memory_kib(pid)?;
    let cpu_secs = crate::host::cpu_split(pid)?.total();
    drop(controller);

    let first_synced = times.iter().map(|t| t.0).min().unwrap_or_default();
    let per_client: Vec<Duration> = times.iter().map(|t| t.1).collect();
    let all_synced = per_client.iter().copied().max().unwrap_or_default();
    Ok(Run {
        listening_secs: listening.as_secs_f64(),
        first_synced_secs: first_synced.as_secs_f64(),
        all_synced_secs: all_synced.as_secs_f64(),
        per_client_secs: per_client.iter().map(Duration::as_secs_f64).collect(),
        rss_kib,
        peak_rss_kib,
        cpu_secs,
        responses_applied,
    })
}

/// The DENY the controller always sends (as istiod does) for PeerAuthentication STRICT; not
/// one of the generated policies, so not counted.
const STATIC_STRICT: &str = "istio_converted_static_strict";

/// One node's xDS client and the store it feeds, as in ztunnel.
struct Client {
    node: String,
    store: StateStore,
    handle: XdsHandle,
}

impl Client {
    fn start(addr: SocketAddr, node: &str, token: &str) -> anyhow::Result<Client> {
        let store = StateStore::new();
        let node_id = Node {
            id: xds::ztunnel_node_id(addr.ip(), &format!("ztunnel-{node}"), "istio-system"),
            cluster: "Kubernetes".into(),
            ..Default::default()
        };
        let mut config = XdsConfig::new(format!("http://{addr}"), node_id);
        config.token = Some(token.to_string());
        // The port is open already; a failure should be retried quickly, not after 100 ms+.
        config.initial_backoff = Duration::from_millis(10);
        config.max_backoff = Duration::from_millis(200);
        let handle = xds::spawn(config, Arc::new(store.clone()))
            .with_context(|| format!("xDS client of {node}"))?;
        Ok(Client {
            node: node.to_string(),
            store,
            handle,
        })
    }

    fn counts(&self) -> (usize, usize, usize) {
        let s = self.store.snapshot();
        (
            s.workloads().count(),
            s.services().count(),
            s.policies()
                .filter(|p| !(p.namespace == "istio-system" && p.name == STATIC_STRICT))
                .count(),
        )
    }

    /// (all types ACKed, whole config held), both since `start`. Fails on a NACK or on more
    /// resources than expected.
    async fn wait_complete(
        &self,
        start: Instant,
        expected: (usize, usize, usize),
    ) -> anyhow::Result<(Duration, Duration)> {
        let mut changes = self.store.subscribe();
        let mut status = self.handle.watch_status();
        self.handle
            .wait_synced()
            .await
            .with_context(|| format!("xDS client of {}", self.node))?;
        let synced = start.elapsed();
        loop {
            if let Some(nack) = self.handle.status().last_nack {
                anyhow::bail!("{} NACKed {}: {}", self.node, nack.type_url, nack.message);
            }
            let counts = self.counts();
            if counts == expected {
                return Ok((synced, start.elapsed()));
            }
            if counts.0 > expected.0 || counts.1 > expected.1 || counts.2 > expected.2 {
                anyhow::bail!(
                    "{} holds (workloads, services, policies) = {counts:?}, more than the {expected:?} generated",
                    self.node
                );
            }
            // A new snapshot, or a NACK (which leaves the snapshot as it was).
            tokio::select! {
                changed = changes.changed() => {
                    changed.with_context(|| format!("state store of {}", self.node))?;
                }
                changed = status.changed() => {
                    changed.with_context(|| format!("xDS client of {}", self.node))?;
                }
            }
        }
    }

    fn describe(&self, expected: (usize, usize, usize)) -> String {
        let status = self.handle.status();
        format!(
            "  {}: connected={} synced={} (workloads, services, policies) = {:?} of {expected:?}; last error: {}; last NACK: {}",
            self.node,
            status.connected,
            status.synced,
            self.counts(),
            status.last_error.as_deref().unwrap_or("none"),
            status.last_nack.map_or("none".into(), |n| n.message),
        )
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

/// (VmRSS, VmHWM) in KiB.
fn memory_kib(pid: i32) -> anyhow::Result<(u64, u64)> {
    let [rss, peak] = crate::host::status_fields_kib(pid, ["VmRSS:", "VmHWM:"])?;
    Ok((rss, peak))
}

/// The `amesh-controller` binary: `--controller`, `AMESH_CONTROLLER_BIN`, or next to this
/// executable (or one directory up).
pub fn find_controller(flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = flag {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("AMESH_CONTROLLER_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("current executable")?;
    let mut tried = Vec::new();
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join("amesh-controller");
        if candidate.is_file() {
            return Ok(candidate);
        }
        tried.push(candidate.display().to_string());
    }
    anyhow::bail!(
        "no amesh-controller binary (tried {}); build it with `cargo build -p amesh-controller --bins` or pass --controller",
        tried.join(", ")
    )
}
