//! The certificates this process holds, one per local identity. Handshakes read it without a
//! lock (an `ArcSwap` of an immutable map); rotation swaps in a new map.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;

use super::workload::WorkloadCert;
use crate::Identity;

type CertMap = HashMap<Identity, Arc<WorkloadCert>>;

/// Shared map identity → current certificate. Cloning shares the same store.
#[derive(Clone, Default)]
pub struct CertStore {
    /// Immutable snapshots: readers `load` one, writers copy-and-swap (rare: one write per
    /// identity per half lifetime).
    certs: Arc<ArcSwap<CertMap>>,
}

/// One line of a config dump: which certificate an identity currently presents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSummary {
    pub identity: Identity,
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl CertStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// The current certificate of `identity`, if any (expired ones included: callers decide).
    pub fn get(&self, identity: &Identity) -> Option<Arc<WorkloadCert>> {
        self.certs.load().get(identity).cloned()
    }

    /// Adds or replaces (rotates) the certificate of its identity; returns the previous one.
    /// Connections already established keep the certificate they were made with.
    pub fn insert(&self, cert: WorkloadCert) -> Option<Arc<WorkloadCert>> {
        self.insert_arc(Arc::new(cert))
    }

    /// As [`CertStore::insert`], for a certificate already shared.
    pub fn insert_arc(&self, cert: Arc<WorkloadCert>) -> Option<Arc<WorkloadCert>> {
        let mut previous = None;
        self.certs.rcu(|map| {
            let mut map = CertMap::clone(map);
            previous = map.insert(cert.identity().clone(), cert.clone());
            map
        });
        previous
    }

    /// Removes the certificate of `identity`; returns it if there was one.
    pub fn remove(&self, identity: &Identity) -> Option<Arc<WorkloadCert>> {
        let mut previous = None;
        self.certs.rcu(|map| {
            let mut map = CertMap::clone(map);
            previous = map.remove(identity);
            map
        });
        previous
    }

    /// Every held certificate, sorted by identity, for config dumps.
    pub fn list(&self) -> Vec<CertSummary> {
        let mut out: Vec<CertSummary> = self
            .certs
            .load()
            .values()
            .map(|c| CertSummary {
                identity: c.identity().clone(),
                serial: c.serial().to_string(),
                not_before: c.not_before(),
                not_after: c.not_after(),
            })
            .collect();
        out.sort_by(|a, b| a.identity.cmp(&b.identity));
        out
    }

    pub fn len(&self) -> usize {
        self.certs.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.certs.load().is_empty()
    }
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.list()).finish()
    }
}
