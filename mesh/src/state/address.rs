//! Addresses in the model: an IP on a network, and the address of a gateway (waypoint).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use amesh_proto::istio::workload as proto;
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::convert::{ip_from_octets, port_or_zero};
use super::error::{FieldError, Problem};

/// An IP address on a named network; `""` is the default network.
///
/// Written `<network>/<ip>` (Istio's form, `/10.0.0.1` on the default network); a bare IP is
/// accepted as the default network.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetworkAddress {
    pub network: String,
    pub address: IpAddr,
}

impl NetworkAddress {
    /// From the proto, refusing prefixes: a VIP or a gateway is one address.
    pub(crate) fn from_proto(p: &proto::NetworkAddress) -> Result<Self, FieldError> {
        let address = ip_from_octets(&p.address).map_err(|e| FieldError::new("address", e))?;
        let full = if address.is_ipv4() { 32 } else { 128 };
        match p.length {
            Some(len) if len != full => {
                Err(FieldError::new("length", Problem::NotSingleAddress { len }))
            }
            _ => Ok(NetworkAddress {
                network: p.network.clone(),
                address,
            }),
        }
    }
}

impl fmt::Display for NetworkAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.address)
    }
}

/// Why a string is not `<network>/<ip>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an address of the form <network>/<ip> or <ip>")]
pub struct NetworkAddressError(String);

impl FromStr for NetworkAddress {
    type Err = NetworkAddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Network names never contain '/', and neither do IPs: the last '/' splits them.
        let (network, ip) = s.rsplit_once('/').unwrap_or(("", s));
        let address = ip.parse().map_err(|_| NetworkAddressError(s.to_string()))?;
        Ok(NetworkAddress {
            network: network.to_string(),
            address,
        })
    }
}

impl Serialize for NetworkAddress {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for NetworkAddress {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

/// Where a gateway (a waypoint) is reached.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayAddress {
    pub destination: GatewayDestination,
    /// Port on which the gateway accepts HBONE (Istio: 15008).
    pub hbone_mtls_port: u16,
}

/// A gateway by address or by service hostname.
///
/// In YAML: a string `<network>/<ip>`, or a map `{namespace, hostname}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(untagged)]
pub enum GatewayDestination {
    Address(NetworkAddress),
    Hostname(NamespacedHostname),
}

/// A service hostname qualified by its namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespacedHostname {
    pub namespace: String,
    pub hostname: String,
}

impl GatewayAddress {
    pub(crate) fn from_proto(p: &proto::GatewayAddress) -> Result<Self, FieldError> {
        use proto::gateway_address::Destination;
        let destination = match &p.destination {
            Some(Destination::Address(a)) => GatewayDestination::Address(
                NetworkAddress::from_proto(a).map_err(|e| e.within("address"))?,
            ),
            Some(Destination::Hostname(h)) => {
                let hostname = NamespacedHostname {
                    namespace: h.namespace.clone(),
                    hostname: h.hostname.clone(),
                };
                if hostname.namespace.is_empty() {
                    return Err(FieldError::new("hostname.namespace", Problem::Missing));
                }
                if hostname.hostname.is_empty() {
                    return Err(FieldError::new("hostname.hostname", Problem::Missing));
                }
                GatewayDestination::Hostname(hostname)
            }
            None => return Err(FieldError::new("destination", Problem::Missing)),
        };
        let hbone_mtls_port =
            port_or_zero(p.hbone_mtls_port).map_err(|e| FieldError::new("hbone_mtls_port", e))?;
        Ok(GatewayAddress {
            destination,
            hbone_mtls_port,
        })
    }
}

// Hand-written so that a bad destination gets a precise message instead of serde's
// "data did not match any variant of untagged enum".
impl<'de> Deserialize<'de> for GatewayDestination {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct DestinationVisitor;

        impl<'de> Visitor<'de> for DestinationVisitor {
            type Value = GatewayDestination;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"<network>/<ip>\" or {namespace, hostname}")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                v.parse()
                    .map(GatewayDestination::Address)
                    .map_err(E::custom)
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                NamespacedHostname::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(GatewayDestination::Hostname)
            }
        }

        d.deserialize_any(DestinationVisitor)
    }
}
