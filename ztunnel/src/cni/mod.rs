//! The node-agent protocol between the `amesh-cni` plugin and ztunnel, and ztunnel's side of it;
//! the plugin itself, and its installer ([`install`]).
//!
//! One request and one response per unix-socket connection, each a JSON document on one line.
//! The plugin blocks the pod's start until ztunnel answers, so capture is in place before the
//! app runs.

pub mod agent;
pub mod install;
pub mod kube;
pub mod plugin;

use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Default path of ztunnel's node-agent socket.
pub const DEFAULT_SOCKET: &str = "/var/run/ztunnel/amesh-cni.sock";

/// A request from the CNI plugin.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum AgentRequest {
    /// A pod sandbox was created: capture it if it belongs to the mesh.
    Add {
        container_id: String,
        uid: String,
        name: String,
        namespace: String,
        ip: IpAddr,
        netns: PathBuf,
        /// The pod's service account, read by the plugin from the API server: the pod is
        /// ambient and ztunnel captures it without waiting for its configuration. Absent when
        /// the plugin has no API access; then ztunnel decides from its configuration.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        service_account: Option<String>,
    },
    /// A pod sandbox is going away: stop capturing it.
    Del {
        container_id: String,
        uid: String,
        name: String,
        namespace: String,
    },
}

/// ztunnel's answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum AgentResponse {
    /// Done; `captured` says whether the pod's traffic now goes through ztunnel.
    Ok { captured: bool, message: String },
    /// Failed; the pod must not start.
    Error { message: String },
}
