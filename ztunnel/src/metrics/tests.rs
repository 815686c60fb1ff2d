//! The counts `Metrics` exposes: unflagged and flagged closes each go to their own label set,
//! found again (interned) on every later connection with the same labels.

use super::*;

fn labels() -> ConnLabels {
    ConnLabels::new(
        Reporter::Destination,
        None,
        None,
        None,
        None,
        SecurityPolicy::MutualTls,
    )
}

/// The value of the one sample of `family` whose labels include `flags`.
fn sample(text: &str, family: &str, flags: &str) -> u64 {
    let matching: Vec<u64> = text
        .lines()
        .filter(|l| l.starts_with(family) && l.contains(&format!("response_flags=\"{flags}\"")))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(matching.len(), 1, "{family} {flags}:\n{text}");
    matching[0]
}

#[test]
fn flagged_and_unflagged_closes_count_apart_and_add_up() {
    let metrics = Metrics::new();
    metrics.open(labels()).close(10, 20, None);
    for _ in 0..3 {
        metrics.denied(labels());
    }
    metrics.open(labels()).close(1, 2, Some("UF"));
    metrics.open(labels()).close(5, 0, None);

    let text = metrics.encode();
    assert_eq!(sample(&text, "istio_tcp_connections_opened_total", "-"), 6);
    assert_eq!(sample(&text, "istio_tcp_connections_closed_total", "-"), 2);
    assert_eq!(
        sample(&text, "istio_tcp_connections_closed_total", "DENY"),
        3
    );
    // Envoy's UF is Istio ztunnel's CONNECT; DENY and CONNECT closes are failures too.
    assert_eq!(
        sample(&text, "istio_tcp_connections_closed_total", "CONNECT"),
        1
    );
    assert_eq!(
        sample(&text, "istio_tcp_connections_failed_total", "CONNECT"),
        1
    );
    assert_eq!(
        sample(&text, "istio_tcp_connections_failed_total", "DENY"),
        3
    );
    assert_eq!(sample(&text, "istio_tcp_received_bytes_total", "-"), 16);
    assert_eq!(sample(&text, "istio_tcp_sent_bytes_total", "-"), 22);
    // A flagged set is interned once, however many connections close with it.
    assert_eq!(metrics.flagged.len(), 2);
    assert_eq!(metrics.sets.len(), 1);
}

#[test]
fn a_broken_connection_is_closed_not_failed_and_plain_tcp_is_unknown_policy() {
    let metrics = Metrics::new();
    let plain = ConnLabels::new(
        Reporter::Source,
        None,
        None,
        None,
        None,
        SecurityPolicy::None,
    );
    metrics.open(plain).close(3, 4, Some("UC"));
    let text = metrics.encode();
    assert_eq!(sample(&text, "istio_tcp_connections_closed_total", "-"), 1);
    assert!(!text.contains("response_flags=\"UC\""), "{text}");
    assert!(!text
        .lines()
        .any(|l| l.starts_with("istio_tcp_connections_failed_total{")));
    assert!(
        text.contains("connection_security_policy=\"unknown\""),
        "{text}"
    );
    assert!(text.contains(&format!(
        "istio_build{{component=\"ztunnel\",tag=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    )));
    // Declared with no xDS client: the dashboard's query finds the family, empty.
    assert!(
        text.contains("# TYPE istio_xds_connection_terminations counter"),
        "{text}"
    );
}
