//! The bench lab: two nodes with the mesh, the same client → server pair in a plain namespace
//! (direct) and an ambient one (mesh), and a check that the mesh path really is tunnelled.
//! With a second capture mode to compare, a second lab of the same layout runs beside the
//! first and contributes its mesh path.

use std::time::Duration;

use anyhow::{bail, Context};
use lab::mesh::MeshOptions;
use lab::{Lab, LabOptions, NodeInfo};

use crate::path::BenchPath;
use crate::settings::Settings;

/// Which path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathKind {
    Direct,
    Mesh,
    /// The second lab's mesh path (the other capture mode).
    Compared,
}

impl PathKind {
    pub fn name(self) -> &'static str {
        match self {
            PathKind::Direct => "direct",
            PathKind::Mesh => "mesh",
            PathKind::Compared => "mesh2",
        }
    }
}

/// The running lab and what the measurements need from it. Dropping it tears the lab down.
pub struct BenchLab {
    pub lab: Lab,
    pub direct: BenchPath,
    pub mesh: BenchPath,
    /// node1 (clients) and node2 (servers).
    pub nodes: Vec<NodeInfo>,
    /// The second lab (other capture mode), if compared.
    pub compared: Option<Box<BenchLab>>,
}

impl BenchLab {
    /// The lab of the first capture mode, and the second one when the settings compare.
    pub fn up(settings: &Settings) -> anyhow::Result<BenchLab> {
        let mut first = BenchLab::up_with(settings, &settings.capture_mode)?;
        if let Some(mode) = &settings.compare_capture {
            let second = BenchLab::up_with(settings, mode)
                .with_context(|| format!("bringing up the second lab ({mode} capture)"))?;
            first.compared = Some(Box::new(second));
        }
        Ok(first)
    }

    /// Paths measured, in the base order of a repetition.
    pub fn kinds(&self) -> Vec<PathKind> {
        let mut kinds = vec![PathKind::Direct, PathKind::Mesh];
        if self.compared.is_some() {
            kinds.push(PathKind::Compared);
        }
        kinds
    }

    /// Tears down both labs (the second first); reports the first failure.
    pub fn down(self) -> anyhow::Result<()> {
        let second = self.compared.map(|c| c.down());
        self.lab.down().context("tearing the lab down")?;
        second.unwrap_or(Ok(()))
    }

    fn up_with(settings: &Settings, capture_mode: &str) -> anyhow::Result<BenchLab> {
        // This binary serves the pods' apps (see `lab::apps`); ztunnel and amesh-cni are
        // looked for next to it.
        let binary = std::env::current_exe().context("cannot find the amesh-bench binary")?;
        let options = LabOptions {
            mesh: Some(MeshOptions {
                capture_mode: capture_mode.to_string(),
                control_plane: settings.control_plane,
                ..MeshOptions::beside(&binary)
            }),
            binary: Some(binary),
            startup_timeout: Duration::from_secs(20),
            ..LabOptions::default()
        };
        let lab = Lab::up(&settings.fixture, 2, options).context("bringing the lab up")?;
        let path = |kind: PathKind| -> anyhow::Result<BenchPath> {
            let ns = kind.name();
            let client = lab.pod(&format!("{ns}/client"))?;
            let server = lab.pod(&format!("{ns}/server"))?;
            Ok(BenchPath {
                name: kind.name(),
                client_netns: client.netns.clone(),
                server_netns: server.netns.clone(),
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
            compared: None,
        })
    }

    pub fn path(&self, kind: PathKind) -> &BenchPath {
        match (kind, &self.compared) {
            (PathKind::Direct, _) => &self.direct,
            (PathKind::Compared, Some(c)) => &c.mesh,
            _ => &self.mesh,
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
            p.check_echo(echo_port)?;
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
