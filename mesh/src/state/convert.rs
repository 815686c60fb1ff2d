//! Checks shared by the proto → model conversions: raw IP octets, port ranges, enum values.

use std::net::IpAddr;

use super::error::{FieldError, Problem};

/// An IP address from the 4 or 16 raw octets the protos carry.
pub(crate) fn ip_from_octets(octets: &[u8]) -> Result<IpAddr, Problem> {
    if let Ok(v4) = <[u8; 4]>::try_from(octets) {
        return Ok(IpAddr::from(v4));
    }
    if let Ok(v6) = <[u8; 16]>::try_from(octets) {
        return Ok(IpAddr::from(v6));
    }
    Err(Problem::AddressLength(octets.len()))
}

/// A port that must be set (1..=65535): service ports.
pub(crate) fn port(value: u32) -> Result<u16, Problem> {
    match u16::try_from(value) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(Problem::Port(value)),
    }
}

/// A port where 0 means "unset": target ports, policy ports.
pub(crate) fn port_or_zero(value: u32) -> Result<u16, Problem> {
    u16::try_from(value).map_err(|_| Problem::PortRange(value))
}

/// A prost enum field: proto3 keeps unknown values as plain integers, we refuse them.
pub(crate) fn known<E: TryFrom<i32>>(value: i32) -> Result<E, Problem> {
    E::try_from(value).map_err(|_| Problem::UnknownEnum(value))
}

/// A string field that must not be empty.
pub(crate) fn required(field: &str, value: String) -> Result<String, FieldError> {
    if value.is_empty() {
        Err(FieldError::new(field, Problem::Missing))
    } else {
        Ok(value)
    }
}

/// Splits `<namespace>/<name>` (service keys, policy names), both parts non-empty.
pub(crate) fn namespaced(value: &str) -> Result<(&str, &str), Problem> {
    match value.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() => Ok((ns, name)),
        _ => Err(Problem::NamespacedName(value.to_string())),
    }
}
