//! The bench lab: two nodes with the mesh, the same client → server pair in a plain namespace
//! (direct) and an ambient one (mesh), and a check that the mesh path really is tunnelled.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use lab::mesh::MeshOptions;
use lab::{Lab, LabOptions, NodeInfo};

use crate::settings::Settings;

/// How long a bench socket may block before the measurement is abandoned.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Which of the two paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathKind {
    Direct,
    Mesh,
}

impl PathKind {
    pub fn name(self) -> &'static str {
        match self {
            PathKind::Direct => "direct",
            PathKind::Mesh => "mesh",
        }
    }
}

/// A client pod and the server pod it talks to.
#[derive(Clone, Debug)]
pub struct BenchPath {
    pub kind: PathKind,
    /// `namespace/name` of the client pod.
    pub client: String,
    /// `namespace/name` of the server pod.
    pub server: String,
    pub server_ip: std::net::IpAddr,
}

impl BenchPath {
    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.server_ip, port)
    }
}

/// The running lab and what the measurements need from it. Dropping it tears the lab down.
pub struct BenchLab {
    pub lab: Lab,
    pub direct: BenchPath,
    pub mesh: BenchPath,
    /// node1 (clients) and node2 (servers).
    pub nodes: Vec<NodeInfo>,
}

impl BenchLab {
    pub fn up(settings: &Settings) -> anyhow::Result<BenchLab> {
        let binary = lab::cluster::find_binary()
            .context("amesh-lab binary not found: run `cargo build --bins` first")?;
        let options = LabOptions {
            mesh: Some(MeshOptions {
                capture_mode: settings.capture_mode.clone(),
                ..MeshOptions::beside(&binary)
            }),
            binary: Some(binary),
            startup_timeout: Duration::from_secs(20),
            ..LabOptions::default()
        };
        let lab = Lab::up(&settings.fixture, 2, options).context("bringing the lab up")?;
        let path = |kind: PathKind| -> anyhow::Result<BenchPath> {
            let ns = kind.name();
            let server = lab.pod(&format!("{ns}/server"))?;
            Ok(BenchPath {
                kind,
                client: format!("{ns}/client"),
                server: server.key(),
                server_ip: server.ip.into(),
            })
        };
        let direct = path(PathKind::Direct)?;
        let mesh = path(PathKind::Mesh)?;
        let nodes = lab.state().nodes.clone();
        Ok(BenchLab {
            lab,
            direct,
            mesh,
            nodes,
        })
    }

    pub fn path(&self, kind: PathKind) -> &BenchPath {
        match kind {
            PathKind::Direct => &self.direct,
            PathKind::Mesh => &self.mesh,
        }
    }

    /// Pids of the ztunnels, in node order.
    pub fn ztunnel_pids(&self) -> anyhow::Result<Vec<(String, i32)>> {
        self.nodes
            .iter()
            .map(|n| {
                let name = lab::mesh::ztunnel_name(&n.name);
                self.lab
                    .state()
                    .processes
                    .iter()
                    .find(|p| p.name == name)
                    .map(|p| (n.name.clone(), p.pid))
                    .with_context(|| format!("no process record for {name}"))
            })
            .collect()
    }

    /// Echoes a few bytes over both paths (through the bench's echo server on `echo_port`),
    /// then checks that the server node's ztunnel reported the mesh connection as mutual TLS
    /// and never saw the direct one: otherwise the comparison would be meaningless.
    pub fn check_paths(&self, echo_port: u16) -> anyhow::Result<()> {
        for p in [&self.direct, &self.mesh] {
            let back = self
                .lab
                .tcp_echo(&p.client, p.addr(echo_port), b"ping", IO_TIMEOUT)
                .with_context(|| format!("{} path: echo from {}", p.kind.name(), p.client))?;
            if back != b"ping" {
                bail!("{} path: echo returned {back:?}", p.kind.name());
            }
        }
        let node2 = self.nodes.get(1).context("the lab has no node2")?;
        let metrics = lab::mesh::metrics(node2)?;
        let opened = |ns: &str| {
            metrics.lines().any(|l| {
                l.starts_with("istio_tcp_connections_opened_total{")
                    && l.contains("reporter=\"destination\"")
                    && l.contains(&format!("destination_workload_namespace=\"{ns}\""))
                    && l.contains("connection_security_policy=\"mutual_tls\"")
            })
        };
        if !opened("mesh") {
            bail!("ztunnel on node2 reported no mutual TLS connection to the mesh server: the mesh path is not tunnelled");
        }
        if opened("direct") {
            bail!("ztunnel on node2 reported a connection to the direct server: the direct path is captured");
        }
        Ok(())
    }
}
