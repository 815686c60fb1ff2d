//! Errors of bringing a lab up, tearing it down and finding it again.

use crate::client::ClientError;
use crate::netns::NetnsError;
use crate::plan::LabId;
use crate::probe::ProbeError;
use crate::process::ProcessError;
use crate::rundir::RunDirError;
use crate::state::StateError;
use crate::topology::TopologyError;

use super::expand::ExpandError;
use super::generated::GeneratedError;

/// Why a lab operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("manifests in {dir} have errors:\n  {}", .errors.join("\n  "))]
    Manifests { dir: String, errors: Vec<String> },
    #[error("cannot find the amesh-lab binary to run pod apps: {0} (set AMESH_LAB_BIN)")]
    NoBinary(String),
    #[error(transparent)]
    Expand(#[from] ExpandError),
    #[error(transparent)]
    RunDir(#[from] RunDirError),
    #[error(transparent)]
    Topology(#[from] TopologyError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("writing the generated manifests: {0}")]
    Generated(#[from] GeneratedError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error("no lab is running (`amesh-lab up DIR` starts one)")]
    NoLab,
    #[error("several labs exist ({}): pick one with --id", .0.iter().map(|i| i.as_str()).collect::<Vec<_>>().join(", "))]
    Ambiguous(Vec<LabId>),
    #[error("hook {hook} failed: {source}")]
    Hook {
        hook: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("tearing down lab {id} left things behind: {detail}")]
    Teardown { id: LabId, detail: String },
    #[error("starting pods: {0}")]
    Runtime(String),
}
