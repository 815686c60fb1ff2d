//! How the xDS client finds and presents itself to the server.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use amesh_proto::envoy::config::core::v3::Node;

use crate::control::ControlRoot;
use amesh_proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};

/// First reconnect delay after a failure.
pub const DEFAULT_INITIAL_BACKOFF: Duration = Duration::from_millis(100);
/// Longest reconnect delay: a restarted controller is found again within this.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(15);
/// How long a TCP (and HTTP/2) connect to the server may take.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings of one [`XdsClient`](super::XdsClient).
#[derive(Clone)]
pub struct XdsConfig {
    /// The server's URI (`XDS_ADDRESS`): `https://amesh-controller.istio-system.svc:15012`
    /// (TLS, verified against `root`) or `http://…:15010` (plaintext).
    pub address: String,
    /// The control plane's root certificate, for an `https://` address (`XDS_ROOT_CA`).
    pub root: Option<ControlRoot>,
    /// Who we are: the server picks what to send by it. For ztunnel the id is
    /// [`ztunnel_node_id`]; sent on the first request of every stream.
    pub node: Node,
    /// The types to subscribe to (wildcard), in this order on each (re)connect.
    pub type_urls: Vec<String>,
    /// First reconnect delay; doubles after each failure up to `max_backoff`.
    pub initial_backoff: Duration,
    /// Cap of the reconnect delay.
    pub max_backoff: Duration,
    /// Limit of one connect attempt.
    pub connect_timeout: Duration,
    /// Sent as `authorization: Bearer <token>` on each stream: the node's ServiceAccount token
    /// or the lab's bootstrap token. `None` sends no authorization header.
    pub token: Option<String>,
    /// Re-read at every (re)connect and sent instead of `token`: a projected ServiceAccount
    /// token, which the kubelet rotates in place. Unreadable → the last token read (or
    /// `token`) is sent and the failure logged.
    pub token_file: Option<std::path::PathBuf>,
    /// Sent as `clusterid` on each stream (`CLUSTER_ID`), for servers that validate tokens per
    /// cluster. `None` sends no such header.
    pub cluster_id: Option<String>,
}

impl XdsConfig {
    /// Subscribes to Istio's ztunnel types (Address, Authorization) at `address` with Istio's
    /// default timings, no token and no cluster id.
    pub fn new(address: impl Into<String>, node: Node) -> Self {
        XdsConfig {
            address: address.into(),
            root: None,
            node,
            type_urls: vec![
                ADDRESS_TYPE_URL.to_string(),
                AUTHORIZATION_TYPE_URL.to_string(),
            ],
            initial_backoff: DEFAULT_INITIAL_BACKOFF,
            max_backoff: DEFAULT_MAX_BACKOFF,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            token: None,
            token_file: None,
            cluster_id: None,
        }
    }
}

impl fmt::Debug for XdsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The token is a credential: never in logs.
        f.debug_struct("XdsConfig")
            .field("address", &self.address)
            .field("root", &self.root)
            .field("node", &self.node)
            .field("type_urls", &self.type_urls)
            .field("initial_backoff", &self.initial_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("connect_timeout", &self.connect_timeout)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_file", &self.token_file)
            .field("cluster_id", &self.cluster_id)
            .finish()
    }
}

/// Istio's node id for a ztunnel: `ztunnel~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`.
pub fn ztunnel_node_id(ip: IpAddr, pod: &str, namespace: &str) -> String {
    format!("ztunnel~{ip}~{pod}.{namespace}~{namespace}.svc.cluster.local")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_has_istios_shape() {
        let ip: IpAddr = "10.1.2.3".parse().expect("literal IP");
        assert_eq!(
            ztunnel_node_id(ip, "ztunnel-abcde", "istio-system"),
            "ztunnel~10.1.2.3~ztunnel-abcde.istio-system~istio-system.svc.cluster.local"
        );
    }

    #[test]
    fn debug_hides_the_token() {
        let mut config = XdsConfig::new("http://127.0.0.1:15012", Node::default());
        config.token = Some("secret-token".into());
        let shown = format!("{config:?}");
        assert!(!shown.contains("secret-token"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }
}
