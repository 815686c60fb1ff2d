use super::*;

const fn ip(a: u8, b: u8, c: u8, d: u8) -> u32 {
    u32::from_ne_bytes([a, b, c, d])
}

const POD: HopPod = HopPod {
    ip4: ip(10, 1, 0, 5),
    mark: 0x539,
};
const CLIENT: u32 = ip(10, 1, 1, 9);
const REMOTE: u32 = ip(93, 184, 216, 34);
const LOOP: u32 = ip(127, 0, 0, 1);

fn never() -> bool {
    panic!("the peer is only looked up for passive sockets")
}

#[test]
fn ztunnels_connection_to_the_app_joins() {
    assert!(joins(
        Established::Active,
        &POD,
        0x539,
        CLIENT,
        POD.ip4,
        never
    ));
}

#[test]
fn ztunnels_connections_to_the_network_do_not_join() {
    assert!(!joins(
        Established::Active,
        &POD,
        0x539,
        POD.ip4,
        REMOTE,
        never
    ));
}

#[test]
fn the_apps_outbound_connection_joins() {
    assert!(joins(Established::Active, &POD, 0, POD.ip4, REMOTE, never));
    // A mark of the app's own that is not ztunnel's changes nothing.
    assert!(joins(Established::Active, &POD, 7, POD.ip4, REMOTE, never));
}

#[test]
fn the_app_calling_itself_and_loopback_do_not_join() {
    assert!(!joins(
        Established::Active,
        &POD,
        0,
        POD.ip4,
        POD.ip4,
        never
    ));
    assert!(!joins(Established::Active, &POD, 0, LOOP, LOOP, never));
    assert!(!joins(
        Established::Active,
        &POD,
        0x539,
        LOOP,
        POD.ip4,
        never
    ));
    assert!(!joins(Established::Passive, &POD, 0, POD.ip4, LOOP, || {
        true
    }));
}

#[test]
fn an_accepted_socket_joins_only_when_its_peer_is_a_hop_end() {
    // ztunnel's steered outbound socket (local: the original destination).
    assert!(joins(
        Established::Passive,
        &POD,
        0x539,
        REMOTE,
        POD.ip4,
        || true
    ));
    // The app's socket accepted from ztunnel's original-source connection.
    assert!(joins(
        Established::Passive,
        &POD,
        0,
        POD.ip4,
        CLIENT,
        || true
    ));
    // ztunnel's inbound sockets, the app's sockets accepted from the network.
    assert!(!joins(
        Established::Passive,
        &POD,
        0x539,
        POD.ip4,
        CLIENT,
        || false
    ));
    assert!(!joins(
        Established::Passive,
        &POD,
        0,
        POD.ip4,
        CLIENT,
        || false
    ));
}

#[test]
fn remote_ports_are_read_in_both_kernel_layouts() {
    let be = u32::from(8080u16.to_be());
    assert_eq!(port_from_remote(be), 8080);
    assert_eq!(port_from_remote(be << 16), 8080);
}

#[test]
fn a_peer_key_swaps_the_ends_and_keeps_the_netns() {
    let k = HopKey {
        netns_cookie: 42,
        local_ip4: POD.ip4,
        remote_ip4: REMOTE,
        local_port: 40000,
        remote_port: 80,
    };
    let p = k.peer();
    assert_eq!((p.local_ip4, p.local_port), (REMOTE, 80));
    assert_eq!((p.remote_ip4, p.remote_port), (POD.ip4, 40000));
    assert_eq!(p.netns_cookie, 42);
    assert_eq!(p.peer(), k);
    assert_eq!(&k.to_bytes()[0..8], &42u64.to_ne_bytes());
}
