//! What several fuzz targets share: turning fuzz bytes into xDS resources and knowing under
//! which name the node proxy's store keeps each one.

use amesh_proto::envoy::service::discovery::v3::Resource;
use amesh_proto::istio::security::Authorization;
use amesh_proto::istio::workload::{address, Address};
use amesh_proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};
use mesh::state::{Policy, Service, Workload};
use prost::Message;

/// The key the store files a resource under, when the body converts; `None` when the store
/// must reject it (undecodable or unconvertible body, or an unknown type).
pub fn content_key(type_url: &str, body: &[u8]) -> Option<String> {
    if type_url == ADDRESS_TYPE_URL {
        match Address::decode(body).ok()?.r#type? {
            address::Type::Workload(w) => Workload::from_proto(w).ok().map(|w| w.uid),
            address::Type::Service(s) => Service::from_proto(s).ok().map(|s| s.key()),
        }
    } else if type_url == AUTHORIZATION_TYPE_URL {
        let p = Authorization::decode(body).ok()?;
        Policy::from_proto(p).ok().map(|p| p.key())
    } else {
        None
    }
}

/// A delta-xDS resource of `type_url` named `name` with `body` as its encoded content.
pub fn resource(type_url: &str, name: String, version: String, body: &[u8]) -> Resource {
    Resource {
        name,
        version,
        resource: Some(prost_types::Any {
            type_url: type_url.to_string(),
            value: body.to_vec(),
        }),
        ..Default::default()
    }
}

/// Splits `data` into chunks, each preceded by its length as two big-endian bytes; a short
/// last chunk takes what is left. Lets one input carry a sequence of messages.
pub fn chunks(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while data.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([data[0], data[1]]));
        let rest = &data[2..];
        let take = len.min(rest.len());
        out.push(&rest[..take]);
        data = &rest[take..];
    }
    out
}
