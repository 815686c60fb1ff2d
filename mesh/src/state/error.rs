//! Errors of turning xDS resources or the local file into the state model.
//!
//! Every error names the resource (kind and name) and the field, so a NACK or a log line tells
//! the operator exactly what to fix.

use std::fmt;
use std::net::IpAddr;

use crate::IdentityError;

/// Kind of a config resource, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResourceKind {
    /// An `istio.workload.Address` with neither a workload nor a service in it.
    Address,
    Workload,
    Service,
    Policy,
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ResourceKind::Address => "address",
            ResourceKind::Workload => "workload",
            ResourceKind::Service => "service",
            ResourceKind::Policy => "policy",
        })
    }
}

/// A resource that cannot become part of the model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {name:?}: field `{field}` {problem}")]
pub struct ConvertError {
    pub kind: ResourceKind,
    /// The resource's name as config refers to it (workload uid, `ns/hostname`, `ns/name`).
    pub name: String,
    /// Path of the offending field inside the resource, e.g. `rules[0].clauses[1].matches[0]`.
    pub field: String,
    pub problem: Problem,
}

impl ConvertError {
    pub(crate) fn new(kind: ResourceKind, name: &str, err: FieldError) -> Self {
        ConvertError {
            kind,
            name: name.to_string(),
            field: err.field,
            problem: err.problem,
        }
    }
}

/// What is wrong with one field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("is empty but required")]
    Missing,
    #[error("is {0} bytes long; an IP address is 4 (IPv4) or 16 (IPv6) bytes")]
    AddressLength(usize),
    #[error("has prefix length {len}, too long for {ip}")]
    PrefixLength { ip: IpAddr, len: u32 },
    #[error("is a /{len} prefix; only single addresses are supported here")]
    NotSingleAddress { len: u32 },
    #[error("has unknown enum value {0}: is the controller newer than this proxy?")]
    UnknownEnum(i32),
    #[error("is port {0}, outside 1..=65535")]
    Port(u32),
    #[error("is port {0}, outside 0..=65535")]
    PortRange(u32),
    #[error("lists service port {0} twice")]
    DuplicatePort(u16),
    #[error("is {0:?}, not of the form <namespace>/<name>")]
    NamespacedName(String),
    #[error("sets no match type: set exactly one of exact, prefix, suffix or presence")]
    EmptyStringMatch,
    #[error("sets several match types: set exactly one of exact, prefix, suffix or presence")]
    SeveralStringMatches,
    #[error("makes an invalid identity: {0}")]
    Identity(Box<IdentityError>),
}

/// A [`Problem`] at a field path; nested converters return it and callers prefix the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FieldError {
    pub(crate) field: String,
    pub(crate) problem: Problem,
}

impl FieldError {
    pub(crate) fn new(field: impl fmt::Display, problem: Problem) -> Self {
        FieldError {
            field: field.to_string(),
            problem,
        }
    }

    /// Puts `parent` in front of the field path (`parent.field`).
    pub(crate) fn within(self, parent: impl fmt::Display) -> Self {
        FieldError {
            field: format!("{parent}.{}", self.field),
            problem: self.problem,
        }
    }
}
