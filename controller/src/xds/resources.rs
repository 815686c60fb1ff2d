//! [`ResourceSet`]: every resource the server serves, by type URL and name, each encoded once
//! and versioned by a hash of its bytes, so that an unchanged resource keeps its version across
//! rebuilds and controller restarts and clients are sent only what really changed.
//!
//! Some types are waypoint-scoped (the `amesh.l7.v1` ones): each of their resources carries the
//! Gateways (`<ns>/<name>`) that may see it, and a stream's [`Client`] is checked against that
//! list when its responses are built. The bytes stay shared; only the visibility is per client.
//! The set also carries who each waypoint runs as ([`WaypointAccounts`]), against which a
//! stream claiming to be a Gateway's waypoint is checked when it starts.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;

use amesh_proto::envoy::service::discovery::v3::Resource;
use amesh_proto::{
    ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, L7_AUTHORIZATION_TYPE_URL, RATE_LIMIT_TYPE_URL,
    REQUEST_AUTHENTICATION_TYPE_URL, SERVICE_ROUTES_TYPE_URL,
};
use prost::Message;
use prost_types::Any;
use sha2::{Digest, Sha256};

use super::client::{Client, WaypointAccounts};
use crate::translate::Translated;

/// Resources of one type, by name. Shared: every client stream reads the same encoded bytes.
pub type TypeResources = BTreeMap<String, Arc<Resource>>;

/// One immutable snapshot of everything served.
#[derive(Debug, Clone, Default)]
pub struct ResourceSet {
    types: HashMap<String, TypeResources>,
    /// Waypoint-scoped types: type URL → resource name → the Gateways (`<ns>/<name>`, sorted)
    /// that may see it. A type absent here is seen by every client.
    audiences: HashMap<String, HashMap<String, Vec<String>>>,
    /// The ServiceAccounts each waypoint Gateway runs as: who may claim to be its waypoint.
    waypoint_accounts: WaypointAccounts,
}

impl ResourceSet {
    /// An empty set with no type at all (clients subscribing get empty answers).
    pub fn new() -> Self {
        Self::default()
    }

    /// The resources of a translation: for everyone, `Address` by workload uid or
    /// `ns/hostname` and `Authorization` by `ns/name`; for their waypoints only,
    /// `ServiceRoutes` by `ns/hostname`, and `amesh.l7.v1.Authorization`,
    /// `RequestAuthentication` and `RateLimit` by `ns/name`. Every
    /// type is present even when empty.
    pub fn from_translated(t: &Translated) -> Self {
        let mut set = ResourceSet::new();
        for type_url in [ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL] {
            set.types.entry(type_url.to_owned()).or_default();
        }
        for type_url in [
            SERVICE_ROUTES_TYPE_URL,
            L7_AUTHORIZATION_TYPE_URL,
            REQUEST_AUTHENTICATION_TYPE_URL,
            RATE_LIMIT_TYPE_URL,
        ] {
            set.types.entry(type_url.to_owned()).or_default();
            set.audiences.entry(type_url.to_owned()).or_default();
        }
        for (name, address) in &t.addresses {
            set.insert(ADDRESS_TYPE_URL, name, address);
        }
        for (name, authorization) in &t.authorizations {
            set.insert(AUTHORIZATION_TYPE_URL, name, authorization);
        }
        // Each waypoint-scoped type goes with its audience of Gateways.
        fn scoped<T: prost::Message>(
            set: &mut ResourceSet,
            type_url: &'static str,
            list: &[crate::translate::L7Resource<T>],
        ) {
            for r in list {
                let gateways = r.waypoints.iter().map(ToString::to_string).collect();
                set.insert_for_waypoints(type_url, &r.name, &r.resource, gateways);
            }
        }
        scoped(&mut set, SERVICE_ROUTES_TYPE_URL, &t.service_routes);
        scoped(&mut set, L7_AUTHORIZATION_TYPE_URL, &t.l7_authorizations);
        scoped(
            &mut set,
            REQUEST_AUTHENTICATION_TYPE_URL,
            &t.request_authentications,
        );
        scoped(&mut set, RATE_LIMIT_TYPE_URL, &t.rate_limits);
        set
    }

    /// Adds (or replaces) `message` as resource `name` of the waypoint-scoped `type_url`,
    /// seen only by the waypoints of the `gateways` (`<ns>/<name>`).
    pub fn insert_for_waypoints(
        &mut self,
        type_url: &str,
        name: &str,
        message: &impl Message,
        mut gateways: Vec<String>,
    ) {
        self.insert(type_url, name, message);
        gateways.sort();
        gateways.dedup();
        self.audiences
            .entry(type_url.to_owned())
            .or_default()
            .insert(name.to_owned(), gateways);
    }

    /// Whether `client` may see resource `name` of `type_url`: always for a type that is not
    /// waypoint-scoped; for a scoped one, only a waypoint whose Gateway is in its audience.
    pub fn visible(&self, type_url: &str, name: &str, client: &Client) -> bool {
        let Some(audience) = self.audiences.get(type_url) else {
            return true;
        };
        client.gateway().is_some_and(|gateway| {
            audience
                .get(name)
                .is_some_and(|list| list.binary_search_by(|g| g.as_str().cmp(gateway)).is_ok())
        })
    }

    /// Sets who each waypoint Gateway runs as (none set: every Gateway runs as the
    /// ServiceAccount named after it).
    pub fn set_waypoint_accounts(&mut self, accounts: WaypointAccounts) {
        self.waypoint_accounts = accounts;
    }

    /// Who each waypoint Gateway runs as.
    pub fn waypoint_accounts(&self) -> &WaypointAccounts {
        &self.waypoint_accounts
    }

    /// Adds (or replaces) `message` as resource `name` of `type_url`.
    pub fn insert(&mut self, type_url: &str, name: &str, message: &impl Message) {
        let value = message.encode_to_vec();
        let resource = Resource {
            version: version_of(&value),
            name: name.to_owned(),
            resource: Some(Any {
                type_url: type_url.to_owned(),
                value,
            }),
            ..Default::default()
        };
        self.types
            .entry(type_url.to_owned())
            .or_default()
            .insert(name.to_owned(), Arc::new(resource));
    }

    /// Removes resource `name` of `type_url`; returns whether it was there.
    pub fn remove(&mut self, type_url: &str, name: &str) -> bool {
        if let Some(audience) = self.audiences.get_mut(type_url) {
            audience.remove(name);
        }
        self.types
            .get_mut(type_url)
            .is_some_and(|m| m.remove(name).is_some())
    }

    /// The resources of `type_url` (`None` if the type was never added).
    pub fn get(&self, type_url: &str) -> Option<&TypeResources> {
        self.types.get(type_url)
    }

    /// A version of the whole set: the hash of every type, name and version, in order. Equal
    /// sets have equal digests, also in another controller process (the debug page's
    /// `configVersion`).
    pub fn digest(&self) -> String {
        let mut types: Vec<_> = self.types.iter().collect();
        types.sort_by_key(|(t, _)| *t);
        let mut bytes = Vec::new();
        for (type_url, resources) in types {
            for (name, r) in resources {
                for part in [type_url.as_str(), name, &r.version] {
                    bytes.extend_from_slice(part.as_bytes());
                    bytes.push(0);
                }
            }
        }
        version_of(&bytes)
    }

    /// Type URL → how many resources of it there are, sorted by type.
    pub fn counts(&self) -> std::collections::BTreeMap<String, usize> {
        self.types
            .iter()
            .map(|(t, r)| (t.clone(), r.len()))
            .collect()
    }

    /// The version of one resource.
    pub fn version(&self, type_url: &str, name: &str) -> Option<&str> {
        self.get(type_url)?.get(name).map(|r| r.version.as_str())
    }

    /// Number of resources of `type_url`.
    pub fn len(&self, type_url: &str) -> usize {
        self.get(type_url).map_or(0, BTreeMap::len)
    }

    /// Whether the set holds no resource of any type.
    pub fn is_empty(&self) -> bool {
        self.types.values().all(BTreeMap::is_empty)
    }

    /// Same types, names, versions, audiences and waypoint accounts: nothing a client could
    /// see, nor who may connect as a waypoint, has changed.
    pub fn same_as(&self, other: &ResourceSet) -> bool {
        self.audiences == other.audiences
            && self.waypoint_accounts == other.waypoint_accounts
            && self.types.len() == other.types.len()
            && self.types.iter().all(|(type_url, mine)| {
                other.types.get(type_url).is_some_and(|theirs| {
                    mine.len() == theirs.len()
                        && mine
                            .iter()
                            .zip(theirs)
                            .all(|((a, ra), (b, rb))| a == b && ra.version == rb.version)
                })
            })
    }
}

/// The version of an encoded resource: the first 64 bits of its SHA-256, in hex. Prost encodes
/// deterministically (fields in number order, and the translation sorts every map-like list),
/// so equal content gives an equal version, also in another controller process.
pub fn version_of(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest[..8]
        .iter()
        .fold(String::with_capacity(16), |mut s, b| {
            // Writing to a String cannot fail.
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use amesh_proto::istio::security::Authorization;

    fn policy(name: &str, dry_run: bool) -> Authorization {
        Authorization {
            name: name.into(),
            namespace: "ns".into(),
            dry_run,
            ..Default::default()
        }
    }

    #[test]
    fn versions_follow_content() {
        let mut a = ResourceSet::new();
        a.insert(AUTHORIZATION_TYPE_URL, "ns/p", &policy("p", false));
        let mut b = ResourceSet::new();
        b.insert(AUTHORIZATION_TYPE_URL, "ns/p", &policy("p", false));
        assert_eq!(
            a.version(AUTHORIZATION_TYPE_URL, "ns/p"),
            b.version(AUTHORIZATION_TYPE_URL, "ns/p")
        );
        assert!(a.same_as(&b));
        b.insert(AUTHORIZATION_TYPE_URL, "ns/p", &policy("p", true));
        assert_ne!(
            a.version(AUTHORIZATION_TYPE_URL, "ns/p"),
            b.version(AUTHORIZATION_TYPE_URL, "ns/p")
        );
        assert!(!a.same_as(&b));
        assert_eq!(
            a.version(AUTHORIZATION_TYPE_URL, "ns/p").map(str::len),
            Some(16)
        );
    }

    #[test]
    fn scoped_resources_are_seen_by_their_waypoints_only() {
        let routes = amesh_proto::amesh::l7::v1::ServiceRoutes::default();
        let mut a = ResourceSet::new();
        a.insert_for_waypoints(
            SERVICE_ROUTES_TYPE_URL,
            "ns/svc",
            &routes,
            vec!["ns/wp".into()],
        );
        a.insert(AUTHORIZATION_TYPE_URL, "ns/p", &policy("p", false));
        let wp = Client::Waypoint {
            gateway: Some("ns/wp".into()),
        };
        let other = Client::Waypoint {
            gateway: Some("ns/other".into()),
        };
        let unnamed = Client::Waypoint { gateway: None };
        assert!(a.visible(SERVICE_ROUTES_TYPE_URL, "ns/svc", &wp));
        for c in [&other, &unnamed, &Client::Ztunnel] {
            assert!(!a.visible(SERVICE_ROUTES_TYPE_URL, "ns/svc", c), "{c:?}");
            // Istio's types are for everyone.
            assert!(a.visible(AUTHORIZATION_TYPE_URL, "ns/p", c), "{c:?}");
        }
        // Same bytes, another audience: a change clients must be told about.
        let mut b = a.clone();
        b.insert_for_waypoints(
            SERVICE_ROUTES_TYPE_URL,
            "ns/svc",
            &routes,
            vec!["ns/other".into()],
        );
        assert!(!a.same_as(&b));
        assert!(b.visible(SERVICE_ROUTES_TYPE_URL, "ns/svc", &other));
    }

    #[test]
    fn who_a_waypoint_runs_as_is_a_change_to_publish() {
        let loaded = crate::manifests::load_yaml(
            "pods.yaml",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: wp-0, namespace: ns, labels: \
             {gateway.networking.k8s.io/gateway-name: wp}}\nspec: {serviceAccountName: runner, \
             containers: [{name: istio-proxy}]}\n",
        );
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let a = ResourceSet::new();
        let mut b = ResourceSet::new();
        b.set_waypoint_accounts(WaypointAccounts::from_manifests(&loaded.manifests));
        assert!(!a.same_as(&b));
        let wp = crate::manifests::ObjectKey::new("ns", "wp");
        assert_eq!(a.waypoint_accounts().of(&wp), ["wp"]);
        assert_eq!(b.waypoint_accounts().of(&wp), ["runner"]);
    }

    #[test]
    fn translation_gives_both_types_even_empty() {
        let set = ResourceSet::from_translated(&Translated::default());
        assert!(set.get(ADDRESS_TYPE_URL).is_some());
        assert!(set.get(AUTHORIZATION_TYPE_URL).is_some());
        assert!(set.get(SERVICE_ROUTES_TYPE_URL).is_some());
        assert!(set.get(L7_AUTHORIZATION_TYPE_URL).is_some());
        assert!(set.is_empty());
        assert!(!set.same_as(&ResourceSet::new()));
    }
}
