//! Tests of the page's rounds on real expositions (tests/fixtures/metrics, see graph_tests.rs):
//! which denials are recent, a proxy that fails or joins, the window a graph is drawn over.

use std::time::Duration;

use super::*;
use crate::graph::tests::{W_A, W_B, Z1_A, Z1_B, Z2_A, Z2_B};
use crate::graph::NodeKind;

fn proxy(kind: &'static str, pod: &str, ip: &str) -> ScrapeTarget {
    ScrapeTarget {
        kind,
        pod: pod.into(),
        ip: ip.parse().expect("ip"),
    }
}

fn proxies() -> [ScrapeTarget; 3] {
    [
        proxy("ztunnel", "istio-system/ztunnel-node1", "10.128.1.2"),
        proxy("ztunnel", "istio-system/ztunnel-node2", "10.128.2.2"),
        proxy("waypoint", "bookinfo/waypoint", "10.128.2.6"),
    ]
}

/// One round: each proxy's text, or `None` for one that did not answer.
fn round(state: &mut State, at: Instant, texts: [Option<&str>; 3]) {
    let targets = proxies().to_vec();
    let results = targets
        .iter()
        .cloned()
        .zip(texts)
        .map(|(t, text)| {
            (
                t,
                text.map(str::to_string)
                    .ok_or_else(|| "no answer".to_string()),
            )
        })
        .collect();
    state.record(targets, results, at, 0);
}

fn names(d: &Denial) -> (&str, &str) {
    (d.source.name.as_str(), d.destination.name.as_str())
}

#[test]
fn recent_denials_are_what_grew_between_two_rounds() {
    let mut s = State::default();
    let t0 = Instant::now();
    round(&mut s, t0, [Some(Z1_A), Some(Z2_A), Some(W_A)]);
    // The first round is everyone's past: no recent denial, though two edges have denials.
    assert!(s.denials.is_empty(), "{:?}", s.denials);
    round(
        &mut s,
        t0 + Duration::from_secs(5),
        [Some(Z1_B), Some(Z2_B), Some(W_B)],
    );
    // Between the rounds: one more refused curl connection; productpage's refused call and
    // the waypoint's 403 did not grow.
    let got: Vec<_> = s.denials.iter().map(names).collect();
    assert_eq!(got, vec![("legacy/curl", "bookinfo/details-v1")]);
    assert_eq!(s.denials[0].count, 1.0);
    assert!(s.errors.is_empty(), "{:?}", s.errors);
    // The same readings again: nothing grew.
    round(
        &mut s,
        t0 + Duration::from_secs(10),
        [Some(Z1_B), Some(Z2_B), Some(W_B)],
    );
    assert_eq!(s.denials.len(), 1);
}

#[test]
fn a_proxy_that_joins_brings_its_past_not_recent_denials() {
    let mut s = State::default();
    let t0 = Instant::now();
    // node2's ztunnel does not answer the first round: listed with its error.
    round(&mut s, t0, [Some(Z1_A), None, Some(W_A)]);
    assert_eq!(
        s.errors
            .get("ztunnel istio-system/ztunnel-node2")
            .map(String::as_str),
        Some("no answer")
    );
    // It answers the second: its DENYs (productpage -> ratings, curl -> details, both since
    // the first round's time) are its past, not recent.
    round(
        &mut s,
        t0 + Duration::from_secs(5),
        [Some(Z1_B), Some(Z2_B), Some(W_B)],
    );
    assert!(s.denials.is_empty(), "{:?}", s.denials);
    assert!(s.errors.is_empty());
    // A proxy that stops answering keeps its last exposition: its counters do not restart,
    // and its edges stay.
    round(
        &mut s,
        t0 + Duration::from_secs(10),
        [Some(Z1_B), None, Some(W_B)],
    );
    let g = s.graph(5.0);
    assert!(g
        .edges
        .iter()
        .any(|e| e.source.name == "legacy/curl" && e.denied == 2.0));
    assert!(s.denials.is_empty(), "{:?}", s.denials);
}

#[test]
fn the_graph_is_drawn_over_the_window_asked_for() {
    let mut s = State::default();
    // Before the first round: an empty graph.
    assert!(s.graph(30.0).edges.is_empty());
    let t0 = Instant::now();
    round(&mut s, t0, [Some(Z1_A), Some(Z2_A), Some(W_A)]);
    // One round: totals only.
    assert_eq!(s.graph(30.0).window_seconds, 0.0);
    round(
        &mut s,
        t0 + Duration::from_secs(10),
        [Some(Z1_B), Some(Z2_B), Some(W_B)],
    );
    round(
        &mut s,
        t0 + Duration::from_secs(20),
        [Some(Z1_B), Some(Z2_B), Some(W_B)],
    );
    // 5 s: the round before the last (10 s back), in which nothing happened.
    let g = s.graph(5.0);
    assert_eq!(g.window_seconds, 10.0);
    let details = |g: &Graph| {
        g.edges
            .iter()
            .find(|e| {
                e.source.name == "bookinfo/productpage-v1"
                    && e.destination.name == "bookinfo/details-v1"
                    && e.destination.kind == NodeKind::Workload
            })
            .map(|e| e.requests_per_second)
            .expect("productpage -> details")
    };
    assert_eq!(details(&g), 0.0);
    // 15 s: none is that old but the first (20 s back): its five requests over 20 s.
    let g = s.graph(15.0);
    assert_eq!(g.window_seconds, 20.0);
    assert!((details(&g) - 0.25).abs() < 1e-9);
    // Longer than kept: the oldest.
    assert_eq!(s.graph(600.0).window_seconds, 20.0);
    // The history is bounded.
    for i in 3..(HISTORY as u64 + 10) {
        round(
            &mut s,
            t0 + Duration::from_secs(10 * i),
            [Some(Z1_B), Some(Z2_B), Some(W_B)],
        );
    }
    assert_eq!(s.history.len(), HISTORY);
}
