//! The shared, swappable current [`Snapshot`]: readers load it without a lock, writers (the
//! xDS client, the local file watcher) build a new one and swap it in.

use std::fmt;
use std::sync::Arc;

use amesh_proto::envoy::service::discovery::v3::Resource;
use amesh_proto::istio::security::Authorization;
use amesh_proto::istio::workload::{address, Address};
use amesh_proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};
use arc_swap::ArcSwap;
use parking_lot::Mutex;
use prost::Message;
use tokio::sync::watch;

use super::error::ConvertError;
use super::local::{LocalConfig, LocalConfigError};
use super::snapshot::Primary;
use super::{Policy, Service, Snapshot, Workload};

/// Handle on the node proxy's config; clones share it.
#[derive(Clone)]
pub struct StateStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// The snapshot connections read; swapped whole, never edited in place.
    current: ArcSwap<Snapshot>,
    /// Carries the version of every new snapshot to subscribers (policy re-checks, readiness).
    changes: watch::Sender<u64>,
    /// Serialises writers so that two updates never both start from the same snapshot.
    /// Readers never take it.
    writer: Mutex<()>,
    /// The local network, copied into every snapshot.
    network: String,
}

impl fmt::Debug for StateStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateStore")
            .field("version", &self.inner.current.load().version())
            .field("network", &self.inner.network)
            .finish()
    }
}

impl Default for StateStore {
    fn default() -> Self {
        Self::new()
    }
}

/// Why an xDS update was rejected (the NACK message is its `Display`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("unsupported resource type {0:?}: this proxy takes {ADDRESS_TYPE_URL} and {AUTHORIZATION_TYPE_URL}")]
    UnknownType(String),
    #[error("{}", describe(.0))]
    Rejected(Vec<RejectedResource>),
}

/// One resource of a rejected update and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name:?}: {reason}")]
pub struct RejectedResource {
    pub name: String,
    pub reason: RejectReason,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RejectReason {
    #[error("the resource has no body")]
    MissingBody,
    #[error("the body is a {got:?}, not the update's type")]
    TypeUrl { got: String },
    #[error("the body does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("the resource name does not match its content, which is named {expected:?}")]
    Name { expected: String },
    #[error("the resource appears twice in the update")]
    Duplicate,
    #[error("{0}")]
    Convert(#[from] ConvertError),
}

fn describe(rejected: &[RejectedResource]) -> String {
    let list: Vec<String> = rejected.iter().map(ToString::to_string).collect();
    format!(
        "rejected {} resource(s), nothing applied: {}",
        rejected.len(),
        list.join("; ")
    )
}

/// A decoded, converted upsert.
enum Upsert {
    // Boxed: a workload is several times the size of the others.
    Workload(Box<Workload>),
    Service(Service),
    Policy(Policy),
}

impl StateStore {
    /// An empty store on the default network `""`.
    pub fn new() -> Self {
        Self::with_network(String::new())
    }

    /// An empty store whose snapshots resolve IPs on `network`.
    pub fn with_network(network: impl Into<String>) -> Self {
        let network = network.into();
        let empty = Snapshot::build(0, network.clone(), Primary::default());
        StateStore {
            inner: Arc::new(Inner {
                current: ArcSwap::from_pointee(empty),
                changes: watch::Sender::new(0),
                writer: Mutex::new(()),
                network,
            }),
        }
    }

    /// The current snapshot; hold it for as long as one consistent view is needed.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.inner.current.load_full()
    }

    /// Yields the new version after every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// Applies one delta xDS response all-or-nothing: every upsert is decoded and converted
    /// first, and if any fails the current snapshot stays and the error names each bad
    /// resource. Removed names the store does not hold are ignored.
    pub fn apply_delta(
        &self,
        type_url: &str,
        upserts: Vec<Resource>,
        removed: &[String],
    ) -> Result<(), ApplyError> {
        if type_url != ADDRESS_TYPE_URL && type_url != AUTHORIZATION_TYPE_URL {
            return Err(ApplyError::UnknownType(type_url.to_string()));
        }
        let mut rejected = Vec::new();
        let mut decoded = Vec::with_capacity(upserts.len());
        let mut seen = std::collections::HashSet::new();
        for r in upserts {
            if !seen.insert(r.name.clone()) {
                rejected.push(RejectedResource {
                    name: r.name,
                    reason: RejectReason::Duplicate,
                });
                continue;
            }
            match decode(type_url, &r) {
                Ok(u) => decoded.push(u),
                Err(reason) => rejected.push(RejectedResource {
                    name: r.name,
                    reason,
                }),
            }
        }
        if !rejected.is_empty() {
            return Err(ApplyError::Rejected(rejected));
        }
        self.update(|p| {
            for name in removed {
                if type_url == ADDRESS_TYPE_URL {
                    p.workloads.remove(name);
                    p.services.remove(name);
                } else {
                    p.policies.remove(name);
                }
            }
            for u in decoded {
                match u {
                    // Names are unique across workloads and services: an upsert replaces
                    // whichever of the two held the name before.
                    Upsert::Workload(w) => {
                        p.services.remove(&w.uid);
                        p.workloads.insert(w.uid.clone(), Arc::new(*w));
                    }
                    Upsert::Service(s) => {
                        let key = s.key();
                        p.workloads.remove(&key);
                        p.services.insert(key, Arc::new(s));
                    }
                    Upsert::Policy(pol) => {
                        p.policies.insert(pol.key(), Arc::new(pol));
                    }
                }
            }
        });
        Ok(())
    }

    /// Replaces everything with the content of a local config file.
    pub fn replace_all(&self, config: LocalConfig) -> Result<(), LocalConfigError> {
        let model = config.into_model()?;
        self.update(|p| *p = Primary::from_model(model));
        Ok(())
    }

    /// Builds the next snapshot from an edited copy of the current primary maps and
    /// publishes it, unless the edit changed nothing.
    fn update(&self, edit: impl FnOnce(&mut Primary)) {
        let _writer = self.inner.writer.lock();
        let current = self.inner.current.load();
        let mut primary = Primary::of(&current);
        edit(&mut primary);
        if primary.same_as(&current) {
            // Nothing changed (a re-sent resource, a re-read file): keep the snapshot, so
            // subscribers do not re-check every connection for nothing.
            return;
        }
        let version = current.version() + 1;
        let next = Snapshot::build(version, self.inner.network.clone(), primary);
        self.inner.current.store(Arc::new(next));
        self.inner.changes.send_replace(version);
    }
}

fn decode(type_url: &str, r: &Resource) -> Result<Upsert, RejectReason> {
    let body = r.resource.as_ref().ok_or(RejectReason::MissingBody)?;
    if body.type_url != type_url {
        return Err(RejectReason::TypeUrl {
            got: body.type_url.clone(),
        });
    }
    let (upsert, name) = if type_url == ADDRESS_TYPE_URL {
        match Address::decode(body.value.as_slice())?.r#type {
            Some(address::Type::Workload(w)) => {
                let w = Workload::from_proto(w)?;
                let name = w.uid.clone();
                (Upsert::Workload(Box::new(w)), name)
            }
            Some(address::Type::Service(s)) => {
                let s = Service::from_proto(s)?;
                let name = s.key();
                (Upsert::Service(s), name)
            }
            None => return Err(RejectReason::MissingBody),
        }
    } else {
        let p = Policy::from_proto(Authorization::decode(body.value.as_slice())?)?;
        let name = p.key();
        (Upsert::Policy(p), name)
    };
    // Removals arrive by resource name: a name that differs from the content's key could
    // never be removed again.
    if r.name != name {
        return Err(RejectReason::Name { expected: name });
    }
    Ok(upsert)
}
