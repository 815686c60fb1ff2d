//! One client stream's delta-ADS state, without IO: what the client subscribed to, what it
//! holds (as far as the server knows), which resource versions it refused, and which responses
//! await an ACK. Requests and new snapshots go in; the responses to send come out.
//!
//! Bookkeeping is optimistic: a resource counts as held from the moment it is sent, so a
//! snapshot arriving before the ACK does not send it twice. A NACK undoes that for the refused
//! response. Since a client refuses a response as a whole, a refused response with several
//! resources is split in halves that are sent again at once; a refused response with a single
//! resource marks that version as rejected: it is not sent again until its content changes.
//! The cost of a bad resource among n is O(log n) extra responses, and the good ones arrive.

use std::collections::{BTreeMap, HashMap, HashSet};

use amesh_proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};
use tracing::{debug, warn};

use super::client::Client;
use super::resources::ResourceSet;
use super::WILDCARD;

/// Responses still waiting for an answer, at most. A client that never answers would otherwise
/// grow this forever; the oldest entries are forgotten (their NACK, if it comes, is ignored).
const MAX_PENDING: usize = 1024;

/// The state of one ADS stream.
#[derive(Debug)]
pub struct Session {
    /// The client's node id (from the first request), for logs.
    node_id: String,
    /// What the client is: which waypoint-scoped resources it may see.
    client: Client,
    /// Per subscribed type URL.
    types: HashMap<String, TypeState>,
    /// Responses sent and not yet answered, by nonce number (nonces are `n` in decimal).
    pending: BTreeMap<u64, Sent>,
    /// Number of the next nonce; every response gets a fresh one.
    next_nonce: u64,
}

#[derive(Debug, Default)]
struct TypeState {
    /// Subscribed to every resource of the type.
    wildcard: bool,
    /// Resources subscribed to by name (besides the wildcard).
    names: HashSet<String>,
    /// name → version the client holds (optimistically: sent counts as held).
    held: HashMap<String, String>,
    /// name → version the client refused; not sent again while the version is the same.
    rejected: HashMap<String, String>,
    /// Nonce number of the last response of this type sent, and of the last one ACKed.
    last_sent: Option<u64>,
    last_acked: Option<u64>,
    /// Responses of this type the client refused.
    nacks: u64,
}

/// What the controller's debug page shows of one stream ([`Session::status`]).
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionStatus {
    pub node_id: String,
    /// `ztunnel`, or `waypoint <ns>/<gateway>`.
    pub client: String,
    /// Responses sent and not answered yet.
    pub pending: usize,
    pub types: Vec<TypeSessionStatus>,
}

/// One subscribed type of a stream.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TypeSessionStatus {
    pub type_url: String,
    pub wildcard: bool,
    /// Resources the client holds (as far as the server knows).
    pub resources: usize,
    /// Nonces (decimal) of the last response sent and the last ACKed; equal when the client
    /// has accepted everything sent so far.
    pub last_sent_nonce: Option<String>,
    pub last_acked_nonce: Option<String>,
    pub nacks: u64,
    /// Resources not sent again until they change, after the client refused them.
    pub rejected: usize,
}

/// What one response carried, to undo it on NACK.
#[derive(Debug)]
struct Sent {
    type_url: String,
    changes: Vec<Change>,
}

#[derive(Debug)]
struct Change {
    name: String,
    /// The version sent, `None` for a removal.
    sent: Option<String>,
    /// What the client held before.
    previous: Option<String>,
}

impl Session {
    /// A session for the client `node_id` (empty if it did not say), seen as a ztunnel.
    pub fn new(node_id: impl Into<String>) -> Self {
        Self::for_client(node_id, Client::Ztunnel)
    }

    /// A session for the client `node_id`, of kind `client`.
    pub fn for_client(node_id: impl Into<String>, client: Client) -> Self {
        Session {
            node_id: node_id.into(),
            client,
            types: HashMap::new(),
            pending: BTreeMap::new(),
            next_nonce: 1,
        }
    }

    /// The client's node id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// What the client is.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Handles one request (subscription change, ACK or NACK) against the current snapshot.
    pub fn on_request(
        &mut self,
        request: DeltaDiscoveryRequest,
        set: &ResourceSet,
    ) -> Vec<DeltaDiscoveryResponse> {
        let mut out = Vec::new();
        let DeltaDiscoveryRequest {
            type_url,
            resource_names_subscribe,
            resource_names_unsubscribe,
            initial_resource_versions,
            response_nonce,
            error_detail,
            ..
        } = request;

        if !response_nonce.is_empty() {
            let answered = response_nonce
                .parse::<u64>()
                .ok()
                .and_then(|n| self.pending.remove(&n));
            match (answered, error_detail) {
                (Some(sent), Some(error)) => {
                    out.extend(self.on_nack(&response_nonce, sent, &error.message, set));
                }
                (Some(sent), None) => {
                    debug!(node = %self.node_id, type_url = %sent.type_url, nonce = %response_nonce, "xDS: ACK");
                    if let Some(ty) = self.types.get_mut(&sent.type_url) {
                        ty.last_acked = response_nonce.parse().ok();
                    }
                }
                (None, Some(error)) => warn!(
                    node = %self.node_id,
                    %type_url,
                    nonce = %response_nonce,
                    "xDS: client refused an unknown or forgotten response: {}",
                    error.message
                ),
                (None, None) => {}
            }
        }

        let first = !self.types.contains_key(&type_url);
        let subscribing =
            !resource_names_subscribe.is_empty() || !resource_names_unsubscribe.is_empty();
        if !first && !subscribing {
            return out;
        }
        let ty = self.types.entry(type_url.clone()).or_default();
        if first {
            // What the client kept from an earlier stream: only the difference is sent, and
            // names it holds that no longer exist come back as removals.
            ty.held = initial_resource_versions;
            // In delta xDS an empty first subscription means wildcard.
            ty.wildcard = resource_names_subscribe.is_empty();
        }
        for name in resource_names_subscribe {
            if name == WILDCARD {
                ty.wildcard = true;
            } else {
                ty.names.insert(name);
            }
        }
        for name in resource_names_unsubscribe {
            if name == WILDCARD {
                ty.wildcard = false;
            } else {
                ty.names.remove(&name);
                // The client drops what it unsubscribes from; nothing to remove explicitly.
                ty.held.remove(&name);
            }
        }
        if ty.wildcard {
            ty.names.clear();
        }
        // The first request of a type is always answered, even with nothing: the client waits
        // for one response per type before it counts as synced.
        out.extend(self.respond(&type_url, set, None, first));
        out
    }

    /// Pushes what changed in `set` to every subscribed type.
    pub fn on_update(&mut self, set: &ResourceSet) -> Vec<DeltaDiscoveryResponse> {
        let mut type_urls: Vec<String> = self.types.keys().cloned().collect();
        type_urls.sort();
        type_urls
            .iter()
            .filter_map(|t| self.respond(t, set, None, false))
            .collect()
    }

    /// What the debug page shows of this stream.
    pub fn status(&self) -> SessionStatus {
        let mut types: Vec<TypeSessionStatus> = self
            .types
            .iter()
            .map(|(type_url, t)| TypeSessionStatus {
                type_url: type_url.clone(),
                wildcard: t.wildcard,
                resources: t.held.len(),
                last_sent_nonce: t.last_sent.map(|n| n.to_string()),
                last_acked_nonce: t.last_acked.map(|n| n.to_string()),
                nacks: t.nacks,
                rejected: t.rejected.len(),
            })
            .collect();
        types.sort_by(|a, b| a.type_url.cmp(&b.type_url));
        SessionStatus {
            node_id: self.node_id.clone(),
            client: match &self.client {
                Client::Ztunnel => "ztunnel".into(),
                Client::Waypoint { gateway } => {
                    format!(
                        "waypoint {}",
                        gateway.as_deref().unwrap_or("(unknown gateway)")
                    )
                }
            },
            pending: self.pending.len(),
            types,
        }
    }

    /// The versions the server believes the client holds for `type_url`.
    pub fn held(&self, type_url: &str) -> Option<&HashMap<String, String>> {
        self.types.get(type_url).map(|t| &t.held)
    }

    /// A refused response: undo its bookkeeping, then isolate the bad resource.
    fn on_nack(
        &mut self,
        nonce: &str,
        sent: Sent,
        message: &str,
        set: &ResourceSet,
    ) -> Vec<DeltaDiscoveryResponse> {
        let Sent { type_url, changes } = sent;
        let names: Vec<&str> = changes.iter().map(|c| c.name.as_str()).collect();
        warn!(
            node = %self.node_id,
            %type_url,
            nonce,
            resources = ?names.iter().take(8).collect::<Vec<_>>(),
            count = names.len(),
            "xDS: client refused a response (NACK): {message}"
        );
        let Some(ty) = self.types.get_mut(&type_url) else {
            return Vec::new();
        };
        ty.nacks += 1;
        for change in &changes {
            // Only if nothing newer was sent since: a later response owns the entry then.
            if ty.held.get(&change.name) == change.sent.as_ref() {
                match &change.previous {
                    Some(v) => ty.held.insert(change.name.clone(), v.clone()),
                    None => ty.held.remove(&change.name),
                };
            }
        }
        if let [single] = changes.as_slice() {
            if let Some(version) = &single.sent {
                warn!(
                    node = %self.node_id,
                    %type_url,
                    resource = %single.name,
                    version,
                    "xDS: not sending this resource again until it changes"
                );
                ty.rejected.insert(single.name.clone(), version.clone());
            }
            return Vec::new();
        }
        let (left, right) = changes.split_at(changes.len() / 2);
        [left, right]
            .into_iter()
            .filter_map(|half| {
                let only: HashSet<String> = half.iter().map(|c| c.name.clone()).collect();
                self.respond(&type_url, set, Some(&only), false)
            })
            .collect()
    }

    /// The response that brings the client's `type_url` up to `set` (restricted to `only`
    /// names if given); `None` if there is nothing to send and `always` is false.
    fn respond(
        &mut self,
        type_url: &str,
        set: &ResourceSet,
        only: Option<&HashSet<String>>,
        always: bool,
    ) -> Option<DeltaDiscoveryResponse> {
        let ty = self.types.get_mut(type_url)?;
        let empty = Default::default();
        let desired = set.get(type_url).unwrap_or(&empty);
        let considered = |name: &str| only.is_none_or(|o| o.contains(name));
        let client = &self.client;
        // A resource this client may not see is, for it, a resource that does not exist.
        let wanted = |ty: &TypeState, name: &str| {
            (ty.wildcard || ty.names.contains(name)) && set.visible(type_url, name, client)
        };

        if only.is_none() {
            // A rejection lasts while the content is the same; forget it once that changes.
            ty.rejected
                .retain(|name, version| desired.get(name).is_some_and(|r| &r.version == version));
        }
        let mut resources: Vec<Resource> = Vec::new();
        let mut changes = Vec::new();
        for (name, resource) in desired {
            if !considered(name) || !wanted(ty, name) {
                continue;
            }
            let held = ty.held.get(name);
            if held == Some(&resource.version) || ty.rejected.get(name) == Some(&resource.version) {
                continue;
            }
            changes.push(Change {
                name: name.clone(),
                sent: Some(resource.version.clone()),
                previous: held.cloned(),
            });
            resources.push((**resource).clone());
        }
        let mut removed: Vec<String> = ty
            .held
            .keys()
            .filter(|name| considered(name) && !(desired.contains_key(*name) && wanted(ty, name)))
            .cloned()
            .collect();
        removed.sort();
        for name in &removed {
            changes.push(Change {
                name: name.clone(),
                sent: None,
                previous: ty.held.get(name).cloned(),
            });
        }
        if changes.is_empty() && !always {
            return None;
        }
        for change in &changes {
            match &change.sent {
                Some(version) => ty.held.insert(change.name.clone(), version.clone()),
                None => ty.held.remove(&change.name),
            };
        }

        ty.last_sent = Some(self.next_nonce);
        let number = self.next_nonce;
        self.next_nonce += 1;
        self.pending.insert(
            number,
            Sent {
                type_url: type_url.to_owned(),
                changes,
            },
        );
        while self.pending.len() > MAX_PENDING {
            self.pending.pop_first();
        }
        Some(DeltaDiscoveryResponse {
            type_url: type_url.to_owned(),
            nonce: number.to_string(),
            resources,
            removed_resources: removed,
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests;
