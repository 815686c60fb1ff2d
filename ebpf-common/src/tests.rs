use super::*;

fn ip(a: [u8; 4]) -> u32 {
    u32::from_ne_bytes(a)
}

const POD: [u8; 4] = [10, 128, 1, 2];

fn pod() -> PodEntry {
    PodEntry {
        ip4: ip(POD),
        probe_ip4: ip([169, 254, 7, 127]),
        dns: 1,
    }
}

fn flow(protocol: u32, from: [u8; 4], to: [u8; 4], port: u32, ifindex: u32) -> Flow {
    Flow {
        protocol,
        local_ip4: ip(to),
        local_port: port,
        remote_ip4: ip(from),
        remote_port: 40000u16.to_be(),
        ingress_ifindex: ifindex,
    }
}

/// The pod's own device: what the kernel reports for anything addressed to the pod's IP.
const ETH0: u32 = 7;

fn classify(f: &Flow, pod: &PodEntry) -> Option<u32> {
    super::classify(f, pod, |_| false)
}

#[test]
fn outbound_tcp_from_the_pod_goes_to_the_outbound_listener() {
    let f = flow(IPPROTO_TCP, POD, [10, 128, 2, 9], 8080, LOOPBACK_IFINDEX);
    assert_eq!(classify(&f, &pod()), Some(slot::OUTBOUND));
    let f = flow(IPPROTO_TCP, POD, [10, 96, 0, 10], 53, LOOPBACK_IFINDEX);
    assert_eq!(classify(&f, &pod()), Some(slot::DNS_TCP));
}

#[test]
fn inbound_tcp_goes_to_hbone_or_plaintext_and_probes_pass() {
    let f = flow(IPPROTO_TCP, [10, 128, 2, 9], POD, 15008, ETH0);
    assert_eq!(classify(&f, &pod()), Some(slot::HBONE));
    let f = flow(IPPROTO_TCP, [10, 128, 2, 9], POD, 8080, ETH0);
    assert_eq!(classify(&f, &pod()), Some(slot::INBOUND_PLAIN));
    let f = flow(IPPROTO_TCP, [169, 254, 7, 127], POD, 8080, ETH0);
    assert_eq!(classify(&f, &pod()), None);
    // Not for this pod at all.
    let f = flow(IPPROTO_TCP, [10, 128, 2, 9], [10, 128, 1, 3], 8080, ETH0);
    assert_eq!(classify(&f, &pod()), None);
}

#[test]
fn loopback_self_calls_and_ztunnel_upstream_connections_pass() {
    let lo = flow(
        IPPROTO_TCP,
        [127, 0, 0, 1],
        [127, 0, 0, 1],
        8080,
        LOOPBACK_IFINDEX,
    );
    assert_eq!(classify(&lo, &pod()), None);
    let myself = flow(IPPROTO_TCP, POD, POD, 8080, ETH0);
    assert_eq!(classify(&myself, &pod()), None);
    // ztunnel connecting to the app from a client's address: the same flow as that client's
    // own, told apart only by the bypass entry ztunnel made for exactly this source.
    let spoofed = flow(IPPROTO_TCP, [10, 128, 2, 9], POD, 8080, ETH0);
    let listed = BypassKey {
        remote_ip4: ip([10, 128, 2, 9]),
        remote_port: 40000u16.to_be(),
        pad: 0,
        local_port: 8080,
    };
    assert_eq!(super::classify(&spoofed, &pod(), |k| *k == listed), None);
    let other_port = Flow {
        remote_port: 40001u16.to_be(),
        ..spoofed
    };
    assert_eq!(
        super::classify(&other_port, &pod(), |k| *k == listed),
        Some(slot::INBOUND_PLAIN)
    );
    assert_eq!(listed.to_bytes().len(), core::mem::size_of::<BypassKey>());
}

#[test]
fn only_dns_is_captured_among_udp() {
    let dns = flow(IPPROTO_UDP, POD, [10, 96, 0, 10], 53, LOOPBACK_IFINDEX);
    assert_eq!(classify(&dns, &pod()), Some(slot::DNS_UDP));
    let stub = flow(
        IPPROTO_UDP,
        [127, 0, 0, 1],
        [127, 0, 0, 53],
        53,
        LOOPBACK_IFINDEX,
    );
    assert_eq!(classify(&stub, &pod()), Some(slot::DNS_UDP));
    let other = flow(IPPROTO_UDP, POD, [10, 96, 0, 10], 123, LOOPBACK_IFINDEX);
    assert_eq!(classify(&other, &pod()), None);
    let inbound = flow(IPPROTO_UDP, [10, 128, 2, 9], POD, 53, ETH0);
    assert_eq!(classify(&inbound, &pod()), None);
    let icmp = flow(1, POD, [10, 128, 2, 9], 0, LOOPBACK_IFINDEX);
    assert_eq!(classify(&icmp, &pod()), None);
}

#[test]
fn with_the_dns_proxy_off_dns_is_not_steered_to_it() {
    let off = PodEntry { dns: 0, ..pod() };
    // TCP DNS is outbound TCP like any other; UDP DNS is left alone (also a resolver on
    // loopback).
    let f = flow(IPPROTO_TCP, POD, [10, 96, 0, 10], 53, LOOPBACK_IFINDEX);
    assert_eq!(classify(&f, &off), Some(slot::OUTBOUND));
    let f = flow(IPPROTO_UDP, POD, [10, 96, 0, 10], 53, LOOPBACK_IFINDEX);
    assert_eq!(classify(&f, &off), None);
    let f = flow(
        IPPROTO_UDP,
        [127, 0, 0, 1],
        [127, 0, 0, 53],
        53,
        LOOPBACK_IFINDEX,
    );
    assert_eq!(classify(&f, &off), None);
    // The rest is unchanged.
    let f = flow(IPPROTO_TCP, POD, [10, 128, 2, 9], 8080, LOOPBACK_IFINDEX);
    assert_eq!(classify(&f, &off), Some(slot::OUTBOUND));
}
