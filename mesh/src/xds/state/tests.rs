//! The protocol state machine driven without sockets.

use std::collections::HashMap;

use amesh_proto::envoy::service::discovery::v3::Resource;
use amesh_proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};
use parking_lot::Mutex;

use super::*;

/// One handler call: type URL, upserted names, removed names.
type Call = (String, Vec<String>, Vec<String>);

/// Records every call; refuses any response carrying a resource named `bad*`.
#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<Call>>,
}

impl ResourceHandler for Recorder {
    fn apply(
        &self,
        type_url: &str,
        upserts: Vec<Resource>,
        removed: &[String],
    ) -> Result<(), String> {
        let names: Vec<String> = upserts.iter().map(|r| r.name.clone()).collect();
        self.calls
            .lock()
            .push((type_url.to_string(), names.clone(), removed.to_vec()));
        match names.iter().find(|n| n.starts_with("bad")) {
            Some(bad) => Err(format!("resource {bad} is malformed")),
            None => Ok(()),
        }
    }
}

fn state() -> AdsState {
    let node = Node {
        id: "ztunnel~10.0.0.1~zt.istio-system~istio-system.svc.cluster.local".into(),
        ..Default::default()
    };
    AdsState::new(
        node,
        &[
            ADDRESS_TYPE_URL.to_string(),
            AUTHORIZATION_TYPE_URL.to_string(),
            ADDRESS_TYPE_URL.to_string(),
        ],
    )
}

fn resource(name: &str, version: &str) -> Resource {
    Resource {
        name: name.into(),
        version: version.into(),
        ..Default::default()
    }
}

fn response(
    type_url: &str,
    nonce: &str,
    upserts: &[(&str, &str)],
    removed: &[&str],
) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        type_url: type_url.into(),
        nonce: nonce.into(),
        system_version_info: format!("sys-{nonce}"),
        resources: upserts.iter().map(|(n, v)| resource(n, v)).collect(),
        removed_resources: removed.iter().map(|s| s.to_string()).collect(),
    }
}

fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

#[test]
fn first_requests_subscribe_wildcard_with_the_node_once() {
    let state = state();
    let requests = state.initial_requests();
    assert_eq!(requests.len(), 2, "duplicate type dropped");
    assert_eq!(requests[0].type_url, ADDRESS_TYPE_URL);
    assert_eq!(requests[1].type_url, AUTHORIZATION_TYPE_URL);
    assert!(requests[0]
        .node
        .as_ref()
        .is_some_and(|n| n.id.starts_with("ztunnel~")));
    assert!(requests[1].node.is_none());
    for request in &requests {
        assert_eq!(request.resource_names_subscribe, [WILDCARD]);
        assert!(request.initial_resource_versions.is_empty());
        assert!(request.response_nonce.is_empty());
        assert!(request.error_detail.is_none());
    }
}

#[test]
fn ack_records_versions_and_sync_needs_every_type() {
    let mut state = state();
    let handler = Recorder::default();
    let reply = state.on_response(
        response(ADDRESS_TYPE_URL, "n1", &[("a", "1"), ("b", "1")], &[]),
        &handler,
    );
    assert_eq!(reply.request.response_nonce, "n1");
    assert_eq!(reply.request.type_url, ADDRESS_TYPE_URL);
    assert!(reply.request.error_detail.is_none());
    assert!(reply.request.node.is_none() && reply.request.resource_names_subscribe.is_empty());
    assert!(matches!(
        reply.verdict,
        Verdict::Acked {
            upserted: 2,
            removed: 0,
            ..
        }
    ));
    assert_eq!(
        state.versions(ADDRESS_TYPE_URL),
        Some(&map(&[("a", "1"), ("b", "1")]))
    );
    assert!(!state.synced(), "Authorization not received yet");

    state.on_response(response(AUTHORIZATION_TYPE_URL, "n2", &[], &[]), &handler);
    assert!(state.synced(), "an empty response also counts");
    let status = state.type_status();
    assert_eq!(status[0].resources, 2);
    assert_eq!(status[0].system_version, "sys-n1");
    assert_eq!((status[1].acks, status[1].resources), (1, 0));
}

#[test]
fn nack_keeps_the_previous_versions() {
    let mut state = state();
    let handler = Recorder::default();
    state.on_response(
        response(ADDRESS_TYPE_URL, "n1", &[("a", "1")], &[]),
        &handler,
    );
    let reply = state.on_response(
        response(ADDRESS_TYPE_URL, "n2", &[("a", "2"), ("bad", "2")], &["a"]),
        &handler,
    );
    let detail = reply.request.error_detail.as_ref().expect("a NACK");
    assert_eq!(detail.code, INVALID_ARGUMENT);
    assert_eq!(detail.message, "resource bad is malformed");
    assert_eq!(reply.request.response_nonce, "n2");
    assert_eq!(
        reply.verdict,
        Verdict::Nacked(Nack {
            type_url: ADDRESS_TYPE_URL.into(),
            nonce: "n2".into(),
            message: "resource bad is malformed".into(),
        })
    );
    assert_eq!(state.versions(ADDRESS_TYPE_URL), Some(&map(&[("a", "1")])));
    assert_eq!(state.type_status()[0].nacks, 1);
    assert_eq!(state.type_status()[0].system_version, "sys-n1");
}

#[test]
fn removal_forgets_and_reconnect_reports_what_is_held() {
    let mut state = state();
    let handler = Recorder::default();
    state.on_response(
        response(ADDRESS_TYPE_URL, "n1", &[("a", "1"), ("b", "1")], &[]),
        &handler,
    );
    state.on_response(
        response(AUTHORIZATION_TYPE_URL, "n2", &[("p", "7")], &[]),
        &handler,
    );
    state.on_response(
        response(ADDRESS_TYPE_URL, "n3", &[("c", "3")], &["b", "never-held"]),
        &handler,
    );
    assert_eq!(
        handler.calls.lock().last().expect("three calls").2,
        ["b", "never-held"],
        "removals are passed through as received"
    );
    state.on_response(
        response(ADDRESS_TYPE_URL, "n4", &[("bad", "4")], &["a"]),
        &handler,
    );

    let requests = state.initial_requests();
    assert_eq!(
        requests[0].initial_resource_versions,
        map(&[("a", "1"), ("c", "3")])
    );
    assert_eq!(requests[1].initial_resource_versions, map(&[("p", "7")]));
    assert!(
        requests[0].node.is_some(),
        "every stream starts with the node"
    );
}

#[test]
fn unsubscribed_type_is_nacked_without_the_handler() {
    let mut state = state();
    let handler = Recorder::default();
    let reply = state.on_response(
        response("type.googleapis.com/other.Thing", "n1", &[("x", "1")], &[]),
        &handler,
    );
    assert!(handler.calls.lock().is_empty());
    let detail = reply.request.error_detail.expect("a NACK");
    assert!(
        detail.message.contains("never subscribed"),
        "{}",
        detail.message
    );
    assert_eq!(reply.request.type_url, "type.googleapis.com/other.Thing");
    assert!(!state.synced());
}
