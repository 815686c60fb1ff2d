//! Who is on the other end of an ADS stream, from its `Node`: a waypoint (node id
//! `waypoint~…`, its Gateway named by the metadata strings `NAMESPACE` and `GATEWAY_NAME`) or
//! anything else (ztunnel). It decides which waypoint-scoped resources the stream may see:
//! ztunnels get none of the L7 types, a waypoint only those of its own Gateway.

use amesh_proto::envoy::config::core::v3::Node;
use prost_types::value::Kind;

/// Node id prefix of waypoint proxies.
pub const WAYPOINT_NODE_PREFIX: &str = "waypoint~";
/// Node metadata key naming the waypoint's namespace.
pub const META_NAMESPACE: &str = "NAMESPACE";
/// Node metadata key naming the waypoint's Gateway.
pub const META_GATEWAY_NAME: &str = "GATEWAY_NAME";

/// The kind of client, for filtering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Client {
    /// A ztunnel, or any client that is not a waypoint: no waypoint-scoped resources.
    Ztunnel,
    /// A waypoint of Gateway `<ns>/<name>`; `None` when its node metadata does not say which
    /// (it then gets no waypoint-scoped resources either).
    Waypoint {
        /// `<namespace>/<gateway name>`.
        gateway: Option<String>,
    },
}

impl Client {
    /// The client a stream's first `Node` describes (no node: a ztunnel-like client).
    pub fn from_node(node: Option<&Node>) -> Self {
        let Some(node) = node else {
            return Client::Ztunnel;
        };
        if !node.id.starts_with(WAYPOINT_NODE_PREFIX) {
            return Client::Ztunnel;
        }
        let field = |key: &str| {
            let value = node.metadata.as_ref()?.fields.get(key)?;
            match &value.kind {
                Some(Kind::StringValue(s)) if !s.is_empty() => Some(s.clone()),
                _ => None,
            }
        };
        let gateway = match (field(META_NAMESPACE), field(META_GATEWAY_NAME)) {
            (Some(ns), Some(name)) => Some(format!("{ns}/{name}")),
            _ => {
                tracing::warn!(
                    node = node.id,
                    "xDS: a waypoint without string metadata {META_NAMESPACE} and \
                     {META_GATEWAY_NAME}: it gets no routes or L7 policies"
                );
                None
            }
        };
        Client::Waypoint { gateway }
    }

    /// The waypoint's Gateway `<ns>/<name>`, if this is a waypoint that said which.
    pub fn gateway(&self) -> Option<&str> {
        match self {
            Client::Waypoint { gateway } => gateway.as_deref(),
            Client::Ztunnel => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_types::{Struct, Value};

    fn node(id: &str, meta: &[(&str, &str)]) -> Node {
        Node {
            id: id.into(),
            metadata: Some(Struct {
                fields: meta
                    .iter()
                    .map(|(k, v)| {
                        (
                            (*k).to_owned(),
                            Value {
                                kind: Some(Kind::StringValue((*v).into())),
                            },
                        )
                    })
                    .collect(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn waypoints_are_told_apart_by_id_and_named_by_metadata() {
        let wp = node(
            "waypoint~10.0.0.9~waypoint-abc.bookinfo~bookinfo.svc.cluster.local",
            &[("NAMESPACE", "bookinfo"), ("GATEWAY_NAME", "waypoint")],
        );
        assert_eq!(
            Client::from_node(Some(&wp)).gateway(),
            Some("bookinfo/waypoint")
        );
        let anonymous = node("waypoint~10.0.0.9~x.y~y.svc.cluster.local", &[]);
        assert_eq!(
            Client::from_node(Some(&anonymous)),
            Client::Waypoint { gateway: None }
        );
        // The metadata alone does not make a waypoint.
        let zt = node(
            "ztunnel~10.0.0.1~ztunnel-x.istio-system~istio-system.svc.cluster.local",
            &[("NAMESPACE", "bookinfo"), ("GATEWAY_NAME", "waypoint")],
        );
        assert_eq!(Client::from_node(Some(&zt)), Client::Ztunnel);
        assert_eq!(Client::from_node(None), Client::Ztunnel);
    }
}
