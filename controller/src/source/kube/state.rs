//! The source's copy of the cluster, sans IO: the per-kind watchers' changes go in, whole
//! [`Manifests`] come out. A (re)list is gathered aside and replaces the kind's objects only
//! once complete, so a snapshot never shows a half-listed kind, and objects missing from the
//! new list are gone.

use std::collections::BTreeMap;

use super::kinds::Kind;
use crate::manifests::{Manifests, Object, ObjectKey};

/// One change to the objects of one kind.
#[derive(Debug)]
pub enum Change {
    /// A list starts; objects listed until [`Change::Listed`] replace the kind's.
    Relist,
    /// One object of the list in progress.
    Item(Object),
    /// The list is complete.
    Listed,
    /// An object was added or changed.
    Applied(Object),
    /// An object was deleted (or is no longer valid).
    Deleted(ObjectKey),
    /// A new version of a policy (listed or updated) is malformed: the last valid version, if
    /// any, stays in force.
    Rejected(ObjectKey),
    /// The API server does not serve the kind (its CRD is not installed): it has no objects.
    Missing,
}

/// A change of `kind`.
#[derive(Debug)]
pub struct Update {
    /// Whose objects change.
    pub kind: Kind,
    /// How.
    pub change: Change,
}

/// Where a kind stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    /// Not listed yet.
    Pending,
    /// Listed at least once.
    Listed,
    /// Not served by the API server.
    Missing,
}

/// Every kind's objects, and where each kind stands.
#[derive(Debug)]
pub struct State {
    /// The objects of complete lists and the changes since.
    current: Manifests,
    /// Lists in progress, by kind.
    relists: BTreeMap<Kind, Manifests>,
    status: BTreeMap<Kind, Status>,
}

impl State {
    /// Nothing listed yet for any of `kinds`.
    pub fn new(kinds: &[Kind]) -> Self {
        State {
            current: Manifests::default(),
            relists: BTreeMap::new(),
            status: kinds.iter().map(|k| (*k, Status::Pending)).collect(),
        }
    }

    /// Applies one change; returns whether the current objects may have changed.
    pub fn apply(&mut self, update: Update) -> bool {
        let Update { kind, change } = update;
        match change {
            Change::Relist => {
                self.relists.insert(kind, Manifests::default());
                false
            }
            Change::Item(object) => {
                self.relists.entry(kind).or_default().insert(object);
                false
            }
            Change::Listed => {
                let mut listed = self.relists.remove(&kind).unwrap_or_default();
                kind.move_all(&mut listed, &mut self.current);
                self.status.insert(kind, Status::Listed);
                true
            }
            Change::Applied(object) => {
                self.current.insert(object);
                true
            }
            Change::Deleted(key) => kind.take(&mut self.current, &key).is_some(),
            Change::Rejected(key) => {
                // During a relist, carry the valid version over into the new list; otherwise
                // simply keep it.
                if let Some(relist) = self.relists.get_mut(&kind) {
                    if let Some(valid) = kind.take(&mut self.current, &key) {
                        relist.insert(valid.clone());
                        self.current.insert(valid);
                    }
                }
                false
            }
            Change::Missing => {
                self.relists.remove(&kind);
                self.status.insert(kind, Status::Missing);
                let had_objects = kind.count(&self.current) > 0;
                kind.move_all(&mut Manifests::default(), &mut self.current);
                had_objects
            }
        }
    }

    /// Whether every kind has been listed or found missing.
    pub fn ready(&self) -> bool {
        self.pending().next().is_none()
    }

    /// The kinds not listed yet.
    pub fn pending(&self) -> impl Iterator<Item = Kind> + '_ {
        self.status
            .iter()
            .filter(|(_, s)| **s == Status::Pending)
            .map(|(k, _)| *k)
    }

    /// The kinds found missing.
    pub fn missing(&self) -> impl Iterator<Item = Kind> + '_ {
        self.status
            .iter()
            .filter(|(_, s)| **s == Status::Missing)
            .map(|(k, _)| *k)
    }

    /// The current objects.
    pub fn manifests(&self) -> &Manifests {
        &self.current
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
