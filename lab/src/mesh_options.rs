//! How the lab runs the mesh ([`MeshOptions`]): plain data, kept apart from `mesh` so that the
//! lab's state and options, which record it, do not depend on the code that runs the mesh.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// How the lab runs the mesh.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshOptions {
    /// Directory holding the `ztunnel` and `amesh-cni` binaries.
    pub bin_dir: PathBuf,
    /// ztunnel's `CAPTURE_MODE`; empty or `auto`: not set, ztunnel's default (eBPF where the
    /// kernel allows it, else nft).
    pub capture_mode: String,
    /// Where ztunnels get config and certificates from.
    #[serde(default)]
    pub control_plane: ControlPlane,
    /// Extra environment of every ztunnel (a test's setting, e.g. the DNS proxy off).
    #[serde(default)]
    pub ztunnel_env: Vec<(String, String)>,
    /// The controller's live graph page (`--graph-addr`) on this port of the lab's root netns
    /// address; `None`: off (the controller's default). Only with the controller.
    #[serde(default)]
    pub graph_port: Option<u16>,
}

/// The lab's source of ztunnel config and certificates. On command lines (and in
/// `AMESH_LAB_CONTROL_PLANE`) it is `controller` or `file`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum ControlPlane {
    /// `amesh-controller` in the root netns: xDS and CA over TLS on port 15012, watching the
    /// manifests.
    #[default]
    #[value(name = "controller")]
    Controller,
    /// No controller: the lab translates the manifests into ztunnel's local file, and each
    /// ztunnel signs its own certificates with the CA on disk.
    #[value(name = "file")]
    LocalFile,
}

impl ControlPlane {
    /// `AMESH_LAB_CONTROL_PLANE=file` selects the local file; anything else the controller.
    pub fn from_env() -> ControlPlane {
        match std::env::var("AMESH_LAB_CONTROL_PLANE").as_deref() {
            Ok("file") => ControlPlane::LocalFile,
            _ => ControlPlane::Controller,
        }
    }

    /// The command-line name: `controller` or `file`.
    pub fn name(self) -> &'static str {
        match self {
            ControlPlane::Controller => "controller",
            ControlPlane::LocalFile => "file",
        }
    }
}

impl MeshOptions {
    /// Binaries next to the `amesh-lab` binary (cargo puts a workspace's binaries together).
    pub fn beside(lab_binary: &Path) -> MeshOptions {
        MeshOptions {
            bin_dir: lab_binary
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default(),
            capture_mode: std::env::var("CAPTURE_MODE").unwrap_or_default(),
            control_plane: ControlPlane::from_env(),
            ztunnel_env: Vec::new(),
            graph_port: None,
        }
    }
}
