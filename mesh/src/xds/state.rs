//! The delta-ADS protocol state without IO: which resources (and versions) the client holds
//! per type, the requests that open a stream, and the ACK or NACK that answers each response.
//!
//! The client feeds it responses and sends what it returns; tests and fuzzers can drive it
//! with no socket at all.

use std::collections::HashMap;

use amesh_proto::envoy::config::core::v3::Node;
use amesh_proto::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use amesh_proto::google::rpc::Status;

use super::handler::ResourceHandler;
use super::status::{Nack, TypeStatus};

/// `google.rpc.Code.INVALID_ARGUMENT`: the code of every NACK's `error_detail`, as Envoy sends.
pub const INVALID_ARGUMENT: i32 = 3;
/// The resource name that subscribes to every resource of a type.
pub const WILDCARD: &str = "*";

/// What became of one response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The handler applied it; the reply is an ACK.
    Acked {
        type_url: String,
        nonce: String,
        upserted: usize,
        removed: usize,
    },
    /// The handler (or the client, for a type it never subscribed to) refused it; the reply is
    /// a NACK and the versions held are unchanged.
    Nacked(Nack),
}

/// The answer to one response: the request to send and what it means.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub request: DeltaDiscoveryRequest,
    pub verdict: Verdict,
}

/// Per-client protocol state; it outlives streams, which is what makes a reconnect incremental.
#[derive(Debug, Clone)]
pub struct AdsState {
    node: Node,
    /// Few types (two for ztunnel): a Vec keeps subscription order and is searched linearly.
    types: Vec<TypeState>,
}

#[derive(Debug, Clone)]
struct TypeState {
    type_url: String,
    /// name → version of every resource the handler accepted and still holds: exactly what
    /// `initial_resource_versions` reports on the next stream.
    versions: HashMap<String, String>,
    synced: bool,
    acks: u64,
    nacks: u64,
    system_version: String,
}

impl AdsState {
    /// A state holding nothing yet, subscribing to `type_urls` (duplicates are dropped).
    pub fn new(node: Node, type_urls: &[String]) -> Self {
        let mut types: Vec<TypeState> = Vec::with_capacity(type_urls.len());
        for type_url in type_urls {
            if types.iter().any(|t| &t.type_url == type_url) {
                continue;
            }
            types.push(TypeState {
                type_url: type_url.clone(),
                versions: HashMap::new(),
                synced: false,
                acks: 0,
                nacks: 0,
                system_version: String::new(),
            });
        }
        AdsState { node, types }
    }

    /// The requests that open a stream: one wildcard subscription per type, each carrying the
    /// versions held so the server sends only what changed (and `removed_resources` for what
    /// disappeared meanwhile). The node goes on the first, as Envoy does.
    pub fn initial_requests(&self) -> Vec<DeltaDiscoveryRequest> {
        self.types
            .iter()
            .enumerate()
            .map(|(i, ty)| DeltaDiscoveryRequest {
                node: (i == 0).then(|| self.node.clone()),
                type_url: ty.type_url.clone(),
                // An empty first subscribe list also means wildcard in delta xDS, but Istio's
                // contract spells it out; explicit is also robust to servers that differ.
                resource_names_subscribe: vec![WILDCARD.to_string()],
                initial_resource_versions: ty.versions.clone(),
                ..Default::default()
            })
            .collect()
    }

    /// Hands one response to `handler` and returns the ACK or NACK to send. On success the
    /// held versions follow the response; on refusal they stay as they were.
    pub fn on_response(
        &mut self,
        response: DeltaDiscoveryResponse,
        handler: &dyn ResourceHandler,
    ) -> Reply {
        let DeltaDiscoveryResponse {
            system_version_info,
            resources,
            type_url,
            nonce,
            removed_resources,
        } = response;
        let Some(ty) = self.types.iter_mut().find(|t| t.type_url == type_url) else {
            // Never handed to the handler: it only knows the types it was set up for.
            let message = format!("type {type_url:?} was never subscribed to by this client");
            return nack(type_url, nonce, message);
        };
        // The handler consumes the resources; remember their versions first.
        let versions: Vec<(String, String)> = resources
            .iter()
            .map(|r| (r.name.clone(), r.version.clone()))
            .collect();
        match handler.apply(&type_url, resources, &removed_resources) {
            Ok(()) => {
                for name in &removed_resources {
                    ty.versions.remove(name);
                }
                let upserted = versions.len();
                ty.versions.extend(versions);
                ty.synced = true;
                ty.acks += 1;
                ty.system_version = system_version_info;
                Reply {
                    request: DeltaDiscoveryRequest {
                        type_url: type_url.clone(),
                        response_nonce: nonce.clone(),
                        ..Default::default()
                    },
                    verdict: Verdict::Acked {
                        type_url,
                        nonce,
                        upserted,
                        removed: removed_resources.len(),
                    },
                }
            }
            Err(message) => {
                ty.nacks += 1;
                nack(type_url, nonce, message)
            }
        }
    }

    /// name → version of what is held for `type_url`; `None` for a type not subscribed to.
    pub fn versions(&self, type_url: &str) -> Option<&HashMap<String, String>> {
        self.types
            .iter()
            .find(|t| t.type_url == type_url)
            .map(|t| &t.versions)
    }

    /// Every subscribed type has had a response applied.
    pub fn synced(&self) -> bool {
        self.types.iter().all(|t| t.synced)
    }

    /// The subscribed types, in order.
    pub fn type_urls(&self) -> impl Iterator<Item = &str> {
        self.types.iter().map(|t| t.type_url.as_str())
    }

    /// Per-type counters for [`XdsStatus`](super::XdsStatus).
    pub fn type_status(&self) -> Vec<TypeStatus> {
        self.types
            .iter()
            .map(|t| TypeStatus {
                type_url: t.type_url.clone(),
                resources: t.versions.len(),
                synced: t.synced,
                acks: t.acks,
                nacks: t.nacks,
                system_version: t.system_version.clone(),
            })
            .collect()
    }
}

/// A NACK of `nonce`: the request carries the nonce and the reason as `error_detail`.
fn nack(type_url: String, nonce: String, message: String) -> Reply {
    Reply {
        request: DeltaDiscoveryRequest {
            type_url: type_url.clone(),
            response_nonce: nonce.clone(),
            error_detail: Some(Status {
                code: INVALID_ARGUMENT,
                message: message.clone(),
                details: Vec::new(),
            }),
            ..Default::default()
        },
        verdict: Verdict::Nacked(Nack {
            type_url,
            nonce,
            message,
        }),
    }
}

#[cfg(test)]
mod tests;
