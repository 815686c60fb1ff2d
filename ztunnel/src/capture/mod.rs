//! Traffic capture inside a pod's network namespace: steering the pod's TCP and DNS to
//! ztunnel's in-pod listeners. `nft` (netns mode) is the default backend; `ebpf` comes next.

pub mod nft;

use std::path::PathBuf;

/// What a capture backend needs to know about a pod.
#[derive(Debug, Clone)]
pub struct PodNetns {
    /// Path of the pod's network namespace.
    pub netns: PathBuf,
    /// Packet mark of ztunnel's own sockets, exempt from capture.
    pub mark: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("`{command}` in {netns} failed: {stderr}")]
    Command {
        command: String,
        netns: PathBuf,
        stderr: String,
    },
    #[error(
        "cannot run `{command}`: {source} (is it installed? setup installs nftables and iproute2)"
    )]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
}

/// The capture backend of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptureMode {
    Nft,
    /// No capture by ztunnel (dedicated mode: the operator steers traffic).
    None,
}

impl CaptureMode {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "" | "nft" | "netns" => Ok(CaptureMode::Nft),
            other => Err(format!(
                "CAPTURE_MODE={other:?} is not supported; use \"nft\""
            )),
        }
    }

    pub async fn install(self, pod: &PodNetns) -> Result<(), CaptureError> {
        match self {
            CaptureMode::Nft => nft::install(pod).await,
            CaptureMode::None => Ok(()),
        }
    }

    pub async fn remove(self, pod: &PodNetns) -> Result<(), CaptureError> {
        match self {
            CaptureMode::Nft => nft::remove(pod).await,
            CaptureMode::None => Ok(()),
        }
    }
}
