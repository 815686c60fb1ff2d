//! [`ResourceSet`]: every resource the server serves, by type URL and name, each encoded once
//! and versioned by a hash of its bytes, so that an unchanged resource keeps its version across
//! rebuilds and controller restarts and clients are sent only what really changed.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;

use amesh_proto::envoy::service::discovery::v3::Resource;
use amesh_proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};
use prost::Message;
use prost_types::Any;
use sha2::{Digest, Sha256};

use crate::translate::Translated;

/// Resources of one type, by name. Shared: every client stream reads the same encoded bytes.
pub type TypeResources = BTreeMap<String, Arc<Resource>>;

/// One immutable snapshot of everything served.
#[derive(Debug, Clone, Default)]
pub struct ResourceSet {
    types: HashMap<String, TypeResources>,
}

impl ResourceSet {
    /// An empty set with no type at all (clients subscribing get empty answers).
    pub fn new() -> Self {
        Self::default()
    }

    /// The ztunnel resources of a translation: `Address` by workload uid or `ns/hostname`,
    /// `Authorization` by `ns/name`. Both types are present even when empty.
    pub fn from_translated(t: &Translated) -> Self {
        let mut set = ResourceSet::new();
        set.types.entry(ADDRESS_TYPE_URL.to_owned()).or_default();
        set.types
            .entry(AUTHORIZATION_TYPE_URL.to_owned())
            .or_default();
        for (name, address) in &t.addresses {
            set.insert(ADDRESS_TYPE_URL, name, address);
        }
        for (name, authorization) in &t.authorizations {
            set.insert(AUTHORIZATION_TYPE_URL, name, authorization);
        }
        set
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
        self.types
            .get_mut(type_url)
            .is_some_and(|m| m.remove(name).is_some())
    }

    /// The resources of `type_url` (`None` if the type was never added).
    pub fn get(&self, type_url: &str) -> Option<&TypeResources> {
        self.types.get(type_url)
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

    /// Same types, names and versions: nothing a client could see has changed.
    pub fn same_as(&self, other: &ResourceSet) -> bool {
        self.types.len() == other.types.len()
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
    fn translation_gives_both_types_even_empty() {
        let set = ResourceSet::from_translated(&Translated::default());
        assert!(set.get(ADDRESS_TYPE_URL).is_some());
        assert!(set.get(AUTHORIZATION_TYPE_URL).is_some());
        assert!(set.is_empty());
        assert!(!set.same_as(&ResourceSet::new()));
    }
}
