//! Who is on the other end of an ADS stream, from its `Node`: a waypoint (node id
//! `waypoint~…`, its Gateway named by the metadata strings `NAMESPACE` and `GATEWAY_NAME`) or
//! anything else (ztunnel). It decides which waypoint-scoped resources the stream may see:
//! ztunnels get none of the L7 types, a waypoint only those of its own Gateway.
//!
//! The node is only a claim; [`Client::admits`] binds it to the authenticated [`Caller`], as
//! istiod does: a waypoint must be the workload its Gateway runs as ([`WaypointAccounts`]).
//! Any caller that does not claim to be a waypoint is served as a ztunnel is.

use std::collections::{BTreeMap, BTreeSet};

use amesh_proto::envoy::config::core::v3::Node;
use prost_types::value::Kind;

use crate::ca::Caller;
use crate::manifests::{Manifests, ObjectKey};
use crate::model::labels::{self, labels};

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

    /// Whether the authenticated `caller` may be this client, or why not (for a
    /// PERMISSION_DENIED). Not a waypoint: anyone authenticated. A waypoint: only a workload;
    /// and when it names its Gateway, only a workload of the Gateway's namespace running as
    /// one of the ServiceAccounts `accounts` says the Gateway runs as. A workload waypoint
    /// that names no Gateway is let in: it is then sent no waypoint-scoped resource.
    pub fn admits(&self, caller: &Caller, accounts: &WaypointAccounts) -> Result<(), String> {
        let Client::Waypoint { gateway } = self else {
            return Ok(());
        };
        let Some(gateway) = gateway else {
            return match caller {
                Caller::Workload { .. } => Ok(()),
                Caller::Node(_) => Err(format!(
                    "{caller} sent a waypoint node id ({WAYPOINT_NODE_PREFIX}…), but a node \
                     agent's token cannot serve a waypoint; a waypoint must present the token \
                     of its own ServiceAccount, and a ztunnel's node id must not start with \
                     {WAYPOINT_NODE_PREFIX}"
                )),
            };
        };
        // `<ns>/<name>` as `from_node` wrote it; a namespace holds no `/`.
        let Some((namespace, name)) = gateway.split_once('/') else {
            return Err(format!(
                "waypoint Gateway {gateway:?} is not `<namespace>/<name>`"
            ));
        };
        let key = ObjectKey::new(namespace, name);
        let expected = accounts.of(&key);
        let must = expected
            .iter()
            .map(|sa| format!("workload {namespace}/{sa}"))
            .collect::<Vec<_>>()
            .join(" or ");
        let source = if accounts.has_pods(&key) {
            format!(
                "the serviceAccountName of the pods labelled {}={name} in {namespace}",
                labels::GATEWAY_NAME
            )
        } else {
            format!(
                "named after the Gateway, as no pod labelled {}={name} is known in {namespace}",
                labels::GATEWAY_NAME
            )
        };
        match caller {
            Caller::Workload {
                namespace: caller_ns,
                service_account,
            } if caller_ns == namespace && expected.iter().any(|sa| sa == service_account) => {
                Ok(())
            }
            Caller::Workload { .. } => Err(format!(
                "{caller} claims to be the waypoint of Gateway {gateway} (node metadata \
                 {META_NAMESPACE}/{META_GATEWAY_NAME}), but that waypoint must authenticate as \
                 {must} ({source}); check the waypoint's metadata and the token it presents"
            )),
            Caller::Node(_) => Err(format!(
                "{caller} claims to be the waypoint of Gateway {gateway}, but a node agent's \
                 token cannot serve a waypoint: it must authenticate as {must} ({source})"
            )),
        }
    }
}

/// Which ServiceAccounts each waypoint Gateway's pods run as, from the manifests: the
/// `serviceAccountName` of the pods labelled `gateway.networking.k8s.io/gateway-name: <name>`
/// in the Gateway's namespace (finished pods aside). A Gateway with no such pod runs as the
/// ServiceAccount named after it, as istiod's waypoint deployment does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WaypointAccounts {
    by_gateway: BTreeMap<ObjectKey, BTreeSet<String>>,
}

impl WaypointAccounts {
    /// Reads the Gateways' pods of `manifests`.
    pub fn from_manifests(manifests: &Manifests) -> Self {
        let mut by_gateway: BTreeMap<ObjectKey, BTreeSet<String>> = BTreeMap::new();
        for (key, pod) in &manifests.pods {
            let Some(gateway) = labels(&pod.metadata).get(labels::GATEWAY_NAME) else {
                continue;
            };
            let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
            if matches!(phase, Some("Succeeded" | "Failed")) {
                continue;
            }
            let spec = pod.spec.as_ref();
            let account = spec
                .and_then(|s| s.service_account_name.as_deref())
                .or_else(|| spec.and_then(|s| s.service_account.as_deref()))
                .filter(|s| !s.is_empty())
                .unwrap_or("default");
            by_gateway
                .entry(ObjectKey::new(&key.namespace, gateway))
                .or_default()
                .insert(account.to_owned());
        }
        WaypointAccounts { by_gateway }
    }

    /// The ServiceAccounts (of the Gateway's namespace) the waypoint of `gateway` runs as,
    /// sorted: its pods', else the Gateway's name.
    pub fn of<'a>(&'a self, gateway: &'a ObjectKey) -> Vec<&'a str> {
        match self.by_gateway.get(gateway) {
            Some(accounts) => accounts.iter().map(String::as_str).collect(),
            None => vec![gateway.name.as_str()],
        }
    }

    /// Whether pods of `gateway` are known (else its ServiceAccount is assumed from its name).
    pub fn has_pods(&self, gateway: &ObjectKey) -> bool {
        self.by_gateway.contains_key(gateway)
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

    fn workload(namespace: &str, service_account: &str) -> Caller {
        Caller::Workload {
            namespace: namespace.into(),
            service_account: service_account.into(),
        }
    }

    fn waypoint_of(gateway: Option<&str>) -> Client {
        Client::Waypoint {
            gateway: gateway.map(Into::into),
        }
    }

    #[test]
    fn a_waypoint_must_be_the_workload_its_gateway_runs_as() {
        let none = WaypointAccounts::default();
        let wp = waypoint_of(Some("shop/wp"));
        assert_eq!(wp.admits(&workload("shop", "wp"), &none), Ok(()));

        let other_sa = wp.admits(&workload("shop", "web"), &none).unwrap_err();
        assert!(
            other_sa.contains("workload shop/web claims to be the waypoint of Gateway shop/wp"),
            "{other_sa}"
        );
        assert!(
            other_sa.contains("must authenticate as workload shop/wp (named after the Gateway"),
            "{other_sa}"
        );
        // Same ServiceAccount name, another namespace.
        assert!(wp.admits(&workload("data", "wp"), &none).is_err());

        let node = wp.admits(&Caller::Node("node1".into()), &none).unwrap_err();
        assert!(
            node.contains("node node1 claims to be the waypoint of Gateway shop/wp"),
            "{node}"
        );
        assert!(node.contains("workload shop/wp"), "{node}");
        // Even without naming a Gateway, a node token is not a waypoint's.
        let anonymous = waypoint_of(None);
        let err = anonymous
            .admits(&Caller::Node("node1".into()), &none)
            .unwrap_err();
        assert!(err.contains("node node1 sent a waypoint node id"), "{err}");
        assert_eq!(anonymous.admits(&workload("shop", "web"), &none), Ok(()));

        // Anyone authenticated may be served as a ztunnel (no L7 types).
        assert_eq!(
            Client::Ztunnel.admits(&workload("shop", "web"), &none),
            Ok(())
        );
        assert_eq!(
            Client::Ztunnel.admits(&Caller::Node("node1".into()), &none),
            Ok(())
        );
    }

    fn pod(yaml: &str) -> (ObjectKey, k8s_openapi::api::core::v1::Pod) {
        let pod: k8s_openapi::api::core::v1::Pod = serde_yaml::from_str(yaml).unwrap();
        (ObjectKey::of(&pod.metadata), pod)
    }

    #[test]
    fn the_gateways_pods_say_which_service_account_it_runs_as() {
        let mut manifests = Manifests::default();
        manifests.pods.extend([
            pod("metadata: {name: wp-1, namespace: shop, labels: {gateway.networking.k8s.io/gateway-name: wp}}\n\
                 spec: {serviceAccountName: wp-runner, containers: []}"),
            // A rollout to another account: both run for a while.
            pod("metadata: {name: wp-2, namespace: shop, labels: {gateway.networking.k8s.io/gateway-name: wp}}\n\
                 spec: {serviceAccountName: wp-next, containers: []}"),
            pod("metadata: {name: old, namespace: shop, labels: {gateway.networking.k8s.io/gateway-name: wp}}\n\
                 spec: {serviceAccountName: retired, containers: []}\n\
                 status: {phase: Succeeded}"),
            // Same Gateway name, another namespace: another Gateway.
            pod("metadata: {name: wp-1, namespace: data, labels: {gateway.networking.k8s.io/gateway-name: wp}}\n\
                 spec: {containers: []}"),
            pod("metadata: {name: web, namespace: shop, labels: {app: web}}\n\
                 spec: {serviceAccountName: web, containers: []}"),
        ]);
        let accounts = WaypointAccounts::from_manifests(&manifests);
        let shop_wp = ObjectKey::new("shop", "wp");
        assert_eq!(accounts.of(&shop_wp), ["wp-next", "wp-runner"]);
        assert_eq!(accounts.of(&ObjectKey::new("data", "wp")), ["default"]);
        assert_eq!(accounts.of(&ObjectKey::new("shop", "other")), ["other"]);
        assert!(accounts.has_pods(&shop_wp));
        assert!(!accounts.has_pods(&ObjectKey::new("shop", "other")));

        let wp = waypoint_of(Some("shop/wp"));
        assert_eq!(wp.admits(&workload("shop", "wp-runner"), &accounts), Ok(()));
        assert_eq!(wp.admits(&workload("shop", "wp-next"), &accounts), Ok(()));
        // The pods' accounts replace the Gateway's name, and a finished pod's is gone.
        for sa in ["wp", "retired"] {
            let err = wp.admits(&workload("shop", sa), &accounts).unwrap_err();
            assert!(
                err.contains(
                    "must authenticate as workload shop/wp-next or workload shop/wp-runner \
                     (the serviceAccountName of the pods labelled \
                     gateway.networking.k8s.io/gateway-name=wp in shop)"
                ),
                "{err}"
            );
        }
    }
}
