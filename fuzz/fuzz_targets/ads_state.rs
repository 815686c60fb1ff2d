//! The delta-ADS client state machine (`mesh::xds::AdsState`) driving the node proxy's real
//! store: a stream of arbitrary `DeltaDiscoveryResponse`s, as a control plane could send.
//!
//! Input: a sequence of chunks (two-byte length, then an encoded `DeltaDiscoveryResponse`);
//! chunks that do not decode are skipped, as the gRPC layer would fail them before the state
//! machine. Checks, after every response: exactly one reply, for that type and nonce; a NACK
//! carries `error_detail` and changes no version, an ACK does not; the versions held are the
//! names the store holds (so the next stream's `initial_resource_versions` tell the server the
//! truth); `synced` follows the ACKs.
#![no_main]

use std::collections::{BTreeSet, HashMap};

use amesh_fuzz::chunks;
use amesh_proto::envoy::config::core::v3::Node;
use amesh_proto::envoy::service::discovery::v3::DeltaDiscoveryResponse;
use amesh_proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};
use libfuzzer_sys::fuzz_target;
use mesh::state::StateStore;
use mesh::xds::{AdsState, Verdict, INVALID_ARGUMENT};
use prost::Message;

/// At most so many responses per input, so one input stays fast.
const MAX_RESPONSES: usize = 32;

fuzz_target!(|data: &[u8]| {
    let store = StateStore::new();
    let types = [
        ADDRESS_TYPE_URL.to_string(),
        AUTHORIZATION_TYPE_URL.to_string(),
    ];
    let mut ads = AdsState::new(Node::default(), &types);
    let mut acked: HashMap<String, u64> = HashMap::new();
    for chunk in chunks(data).into_iter().take(MAX_RESPONSES) {
        let Ok(response) = DeltaDiscoveryResponse::decode(chunk) else {
            continue;
        };
        let (type_url, nonce) = (response.type_url.clone(), response.nonce.clone());
        let before = ads.versions(&type_url).cloned();
        let reply = ads.on_response(response.clone(), &store);
        assert_eq!(reply.request.type_url, type_url);
        assert_eq!(reply.request.response_nonce, nonce);
        match &reply.verdict {
            Verdict::Acked {
                type_url: t,
                nonce: n,
                upserted,
                removed,
            } => {
                assert_eq!((t, n), (&type_url, &nonce));
                assert!(
                    reply.request.error_detail.is_none(),
                    "an ACK with error_detail"
                );
                assert_eq!(*upserted, response.resources.len());
                assert_eq!(*removed, response.removed_resources.len());
                *acked.entry(type_url.clone()).or_default() += 1;
                let held = ads
                    .versions(&type_url)
                    .expect("an ACKed type is subscribed");
                for r in &response.resources {
                    assert_eq!(
                        held.get(&r.name),
                        Some(&r.version),
                        "ACKed {:?} not held",
                        r.name
                    );
                }
                for name in &response.removed_resources {
                    if !response.resources.iter().any(|r| &r.name == name) {
                        assert!(!held.contains_key(name), "removed {name:?} still held");
                    }
                }
            }
            Verdict::Nacked(nack) => {
                assert_eq!((&nack.type_url, &nack.nonce), (&type_url, &nonce));
                let detail = reply
                    .request
                    .error_detail
                    .as_ref()
                    .expect("a NACK without detail");
                assert_eq!(detail.code, INVALID_ARGUMENT);
                assert_eq!(
                    ads.versions(&type_url).cloned(),
                    before,
                    "a NACK changed versions"
                );
            }
        }
        assert_held_matches_store(&ads, &store);
    }
    assert_eq!(ads.synced(), types.iter().all(|t| acked.contains_key(t)));
    for (request, status) in ads.initial_requests().iter().zip(ads.type_status()) {
        assert_eq!(request.type_url, status.type_url);
        assert_eq!(request.initial_resource_versions.len(), status.resources);
        assert_eq!(
            acked.get(&status.type_url).copied().unwrap_or(0),
            status.acks
        );
    }
});

/// The names the client reports holding are exactly those in the store.
fn assert_held_matches_store(ads: &AdsState, store: &StateStore) {
    let snapshot = store.snapshot();
    let names = |t: &str| -> BTreeSet<String> {
        ads.versions(t)
            .map(|v| v.keys().cloned().collect())
            .unwrap_or_default()
    };
    let addresses: BTreeSet<String> = snapshot
        .workloads()
        .map(|w| w.uid.clone())
        .chain(snapshot.services().map(|s| s.key()))
        .collect();
    assert_eq!(
        names(ADDRESS_TYPE_URL),
        addresses,
        "Address versions differ from the store"
    );
    let policies: BTreeSet<String> = snapshot.policies().map(|p| p.key()).collect();
    assert_eq!(
        names(AUTHORIZATION_TYPE_URL),
        policies,
        "Authorization versions differ from the store"
    );
}
