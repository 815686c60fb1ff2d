//! Wire-format pins: hand-assembled protobuf bytes must decode to the expected fields, and
//! (where protobuf encoding is canonical: fields in tag order, one map entry) re-encode to the
//! very same bytes. A wrong field number, type or packing in a `.proto` file fails here.
//!
//! Every tag byte is annotated as `field << 3 | wire type`, wire types being 0 = varint,
//! 2 = length-delimited. Tags of fields 16 and above take two varint bytes.

use amesh_proto::envoy::config::core::v3::Node;
use amesh_proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use amesh_proto::istio::security::{self, string_match::MatchType, Authorization};
use amesh_proto::istio::v1::auth::{IstioCertificateRequest, IstioCertificateResponse};
use amesh_proto::istio::workload::zds::{
    workload_request, workload_response, Version, WorkloadRequest, WorkloadResponse, ZdsHello,
};
use amesh_proto::istio::workload::{
    address, gateway_address, service, AppProtocol, GatewayAddress, NetworkAddress, Service,
    TunnelProtocol, Workload, WorkloadStatus,
};
use amesh_proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};
use prost::Message;
use prost_types::value::Kind;

/// Joins the annotated pieces of one message.
fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// Decodes `bytes`, and checks that re-encoding the result gives `bytes` back.
fn decode_canonical<M: Message + Default>(bytes: &[u8]) -> M {
    let msg = M::decode(bytes).expect("valid protobuf");
    assert_eq!(
        msg.encode_to_vec(),
        bytes,
        "re-encoding must be byte-identical"
    );
    msg
}

#[test]
fn type_urls() {
    assert_eq!(
        ADDRESS_TYPE_URL,
        "type.googleapis.com/istio.workload.Address"
    );
    assert_eq!(
        AUTHORIZATION_TYPE_URL,
        "type.googleapis.com/istio.security.Authorization"
    );
    // The byte literals below write this length by hand.
    assert_eq!(ADDRESS_TYPE_URL.len(), 0x2a);
}

#[test]
fn workload() {
    let bytes = cat(&[
        &[0x0a, 0x05], // name = 1, LEN (1<<3|2), 5 bytes
        b"web-0",
        &[0x12, 0x02], // namespace = 2, LEN (2<<3|2)
        b"ns",
        &[0x1a, 0x04, 10, 0, 0, 7], // addresses = 3, LEN: raw IPv4 octets 10.0.0.7
        &[0x1a, 0x10],              // addresses = 3 again: raw IPv6 octets fd00::1
        &[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        &[0x28, 0x01], // tunnel_protocol = 5, VARINT (5<<3|0): HBONE
        &[0x32, 0x0d], // trust_domain = 6, LEN (6<<3|2), 13 bytes
        b"cluster.local",
        &[0x3a, 0x02], // service_account = 7, LEN (7<<3|2)
        b"sa",
        &[0x88, 0x01, 0x01], // status = 17, VARINT: 17<<3|0 = 136 = varint 88 01; UNHEALTHY
        &[0xa2, 0x01, 0x13], // uid = 20, LEN: 20<<3|2 = 162 = varint a2 01; 19 bytes
        b"c1//v1/Pod/ns/web-0",
        &[0xb2, 0x01, 0x11], // services = 22, LEN: 22<<3|2 = 178 = b2 01; map entry, 17 bytes
        &[0x0a, 0x06],       //   entry key = 1, LEN
        b"ns/svc",
        &[0x12, 0x07],       //   entry value = 2, LEN: PortList
        &[0x0a, 0x05],       //     ports = 1, LEN: Port
        &[0x08, 0x50],       //       service_port = 1, VARINT: 80
        &[0x10, 0x90, 0x3f], //       target_port = 2, VARINT: 8080 = varint 90 3f
        &[0xda, 0x01, 0x02], // capacity = 27, LEN: 27<<3|2 = 218 = da 01; UInt32Value
        &[0x08, 0x03],       //   value = 1, VARINT: 3
    ]);
    let w: Workload = decode_canonical(&bytes);
    assert_eq!(w.uid, "c1//v1/Pod/ns/web-0");
    assert_eq!(w.name, "web-0");
    assert_eq!(w.namespace, "ns");
    assert_eq!(
        w.addresses,
        vec![
            vec![10, 0, 0, 7],
            vec![0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]
        ]
    );
    assert_eq!(w.tunnel_protocol(), TunnelProtocol::Hbone);
    assert_eq!(w.trust_domain, "cluster.local");
    assert_eq!(w.service_account, "sa");
    assert_eq!(w.status(), WorkloadStatus::Unhealthy);
    assert_eq!(w.capacity, Some(3));
    assert_eq!(w.services.len(), 1);
    let ports = &w.services["ns/svc"].ports;
    assert_eq!(ports.len(), 1);
    assert_eq!((ports[0].service_port, ports[0].target_port), (80, 8080));
    assert_eq!(ports[0].app_protocol(), AppProtocol::Unknown);
    // Fields not on the wire keep their defaults.
    assert!(w.waypoint.is_none());
    assert!(w.hostname.is_empty());
}

#[test]
fn workload_reserved_and_unknown_values() {
    let bytes = cat(&[
        &[0x7a, 0x01], // field 15 (reserved), LEN: 15<<3|2 = 122; skipped as unknown
        b"x",
        &[0x28, 0x07], // tunnel_protocol = 5, VARINT: 7, not a known TunnelProtocol
        &[0xda, 0x01, 0x00], // capacity = 27, LEN 0: an explicit UInt32Value(0)
    ]);
    let w = Workload::decode(bytes.as_slice()).unwrap();
    assert_eq!(w.tunnel_protocol, 7);
    assert!(TunnelProtocol::try_from(w.tunnel_protocol).is_err());
    assert_eq!(
        w.capacity,
        Some(0),
        "wrapper presence survives a zero value"
    );
    // The reserved field is dropped; the rest re-encodes.
    assert_eq!(w.encode_to_vec(), [0x28, 0x07, 0xda, 0x01, 0x00]);
}

#[test]
fn service_with_ports_and_waypoint() {
    let bytes = cat(&[
        &[0x0a, 0x03], // name = 1, LEN
        b"svc",
        &[0x12, 0x02], // namespace = 2, LEN
        b"ns",
        &[0x1a, 0x18], // hostname = 3, LEN, 24 bytes
        b"svc.ns.svc.cluster.local",
        &[0x22, 0x06],               // addresses = 4, LEN: NetworkAddress
        &[0x12, 0x04, 10, 96, 0, 1], //   address = 2, LEN: 10.96.0.1
        &[0x2a, 0x07],               // ports = 5, LEN: Port
        &[0x08, 0x50],               //   service_port = 1, VARINT: 80
        &[0x10, 0x90, 0x3f],         //   target_port = 2, VARINT: 8080
        &[0x18, 0x02],               //   app_protocol = 3, VARINT: HTTP2
        &[0x2a, 0x08],               // ports = 5, LEN: Port
        &[0x08, 0xbb, 0x03],         //   service_port = 1, VARINT: 443
        &[0x10, 0xfb, 0x41],         //   target_port = 2, VARINT: 8443
        &[0x18, 0x05],               //   app_protocol = 3, VARINT: TLS
        &[0x3a, 0x0d],               // waypoint = 7, LEN: GatewayAddress
        &[0x0a, 0x08],               //   hostname = 1 (oneof destination), LEN
        &[0x0a, 0x02],               //     namespace = 1, LEN
        b"ns",
        &[0x12, 0x02], //     hostname = 2, LEN
        b"wp",
        &[0x18, 0xa0, 0x75], //   hbone_mtls_port = 3, VARINT: 15008
        &[0x70, 0x01],       // visibility = 14, VARINT: 14<<3|0 = 112; NAMESPACE
    ]);
    let s: Service = decode_canonical(&bytes);
    assert_eq!(s.name, "svc");
    assert_eq!(s.namespace, "ns");
    assert_eq!(s.hostname, "svc.ns.svc.cluster.local");
    assert_eq!(s.addresses.len(), 1);
    assert_eq!(s.addresses[0].address, [10, 96, 0, 1]);
    assert_eq!(s.addresses[0].network, "");
    assert_eq!(s.addresses[0].length, None);
    let ports: Vec<_> = s
        .ports
        .iter()
        .map(|p| (p.service_port, p.target_port, p.app_protocol()))
        .collect();
    assert_eq!(
        ports,
        [
            (80, 8080, AppProtocol::Http2),
            (443, 8443, AppProtocol::Tls)
        ]
    );
    let wp = s.waypoint.as_ref().unwrap();
    assert_eq!(wp.hbone_mtls_port, 15008);
    match &wp.destination {
        Some(gateway_address::Destination::Hostname(h)) => {
            assert_eq!((h.namespace.as_str(), h.hostname.as_str()), ("ns", "wp"));
        }
        other => panic!("expected a hostname destination, got {other:?}"),
    }
    assert_eq!(s.visibility(), service::Visibility::Namespace);
}

#[test]
fn network_address_optional_length() {
    // Present but zero: proto3 `optional` keeps the field on the wire.
    let with_zero = [
        0x12, 0x04, 10, 0, 0, 0, // address = 2, LEN
        0x18, 0x00, // length = 3, VARINT: 0
    ];
    let a: NetworkAddress = decode_canonical(&with_zero);
    assert_eq!(a.length, Some(0));
    // Absent.
    let without = [0x12, 0x04, 10, 0, 0, 0];
    let b: NetworkAddress = decode_canonical(&without);
    assert_eq!(b.length, None);

    // As the IP destination of a gateway (oneof destination, address = 2).
    let gw = [
        0x12, 0x0a, // address = 2, LEN: NetworkAddress
        0x0a, 0x02, b'n', b'1', // network = 1, LEN
        0x12, 0x04, 10, 0, 0, 9, // address = 2, LEN
    ];
    let g: GatewayAddress = decode_canonical(&gw);
    match g.destination {
        Some(gateway_address::Destination::Address(a)) => {
            assert_eq!(a.network, "n1");
            assert_eq!(a.address, [10, 0, 0, 9]);
        }
        other => panic!("expected an address destination, got {other:?}"),
    }
}

#[test]
fn address_oneof() {
    // workload = 1, LEN 3: Workload { name = 1, LEN 1, "a" }
    let w = [0x0a, 0x03, 0x0a, 0x01, b'a'];
    let a: amesh_proto::istio::workload::Address = decode_canonical(&w);
    match a.r#type {
        Some(address::Type::Workload(w)) => assert_eq!(w.name, "a"),
        other => panic!("expected a workload, got {other:?}"),
    }
    // service = 2, LEN 3: Service { name = 1, LEN 1, "b" }
    let s = [0x12, 0x03, 0x0a, 0x01, b'b'];
    let a: amesh_proto::istio::workload::Address = decode_canonical(&s);
    match a.r#type {
        Some(address::Type::Service(s)) => assert_eq!(s.name, "b"),
        other => panic!("expected a service, got {other:?}"),
    }
    // An empty workload is still a workload: the oneof case is carried by the tag alone.
    let a: amesh_proto::istio::workload::Address = decode_canonical(&[0x0a, 0x00]);
    assert_eq!(a.r#type, Some(address::Type::Workload(Workload::default())));
}

#[test]
fn authorization_rule_clause_match() {
    let bytes = cat(&[
        &[0x0a, 0x07], // name = 1, LEN
        b"allow-x",
        &[0x12, 0x02], // namespace = 2, LEN
        b"ns",
        &[0x18, 0x01], // scope = 3, VARINT: NAMESPACE
        &[0x20, 0x01], // action = 4, VARINT: DENY
        &[0x2a, 0x34], // rules = 5, LEN 52: Rule
        &[0x0a, 0x32], //   clauses = 1, LEN 50: Clause
        &[0x12, 0x30], //     matches = 2, LEN 48: Match
        &[0x1a, 0x0e], //       principals = 3, LEN: StringMatch
        &[0x0a, 0x0c], //         exact = 1, LEN 12
        b"td/ns/x/sa/y",
        &[0x1a, 0x02],              //       principals = 3, LEN: StringMatch
        &[0x22, 0x00],              //         presence = 4, LEN 0: google.protobuf.Empty
        &[0x3a, 0x08],              //       destination_ips = 7, LEN: Address
        &[0x0a, 0x04, 10, 0, 0, 0], //   address = 1, LEN: 10.0.0.0
        &[0x10, 0x08],              //         length = 2, VARINT: 8
        &[0x4a, 0x03],              //       destination_ports = 9, LEN (packed, 9<<3|2 = 74)
        &[0x50, 0x90, 0x3f],        //   80, 8080
        &[0x52, 0x01],              //       not_destination_ports = 10, LEN (packed, 10<<3|2 = 82)
        &[0x16],                    //         22
        &[0x5a, 0x08],              //       service_accounts = 11, LEN: ServiceAccountMatch
        &[0x0a, 0x02],              //         namespace = 1, LEN
        b"ns",
        &[0x12, 0x02], //         serviceAccount = 2, LEN
        b"sa",
        &[0x30, 0x01], // dry_run = 6, VARINT: true
    ]);
    let p: Authorization = decode_canonical(&bytes);
    assert_eq!(p.name, "allow-x");
    assert_eq!(p.namespace, "ns");
    assert_eq!(p.scope(), security::Scope::Namespace);
    assert_eq!(p.action(), security::Action::Deny);
    assert!(p.dry_run);
    assert_eq!(p.rules.len(), 1);
    assert_eq!(p.rules[0].clauses.len(), 1);
    assert_eq!(p.rules[0].clauses[0].matches.len(), 1);
    let m = &p.rules[0].clauses[0].matches[0];
    let principals: Vec<_> = m.principals.iter().map(|s| s.match_type.clone()).collect();
    assert_eq!(
        principals,
        [
            Some(MatchType::Exact("td/ns/x/sa/y".into())),
            Some(MatchType::Presence(())),
        ]
    );
    assert_eq!(m.destination_ips.len(), 1);
    assert_eq!(m.destination_ips[0].address, [10, 0, 0, 0]);
    assert_eq!(m.destination_ips[0].length, 8);
    assert_eq!(m.destination_ports, [80, 8080]);
    assert_eq!(m.not_destination_ports, [22]);
    assert_eq!(m.service_accounts.len(), 1);
    assert_eq!(m.service_accounts[0].namespace, "ns");
    assert_eq!(m.service_accounts[0].service_account, "sa");
    assert!(m.namespaces.is_empty() && m.not_principals.is_empty());
}

#[test]
fn match_ports_accept_unpacked_encoding() {
    // Parsers must also accept repeated scalars written one tag per value.
    let bytes = [
        0x48, 0x50, // destination_ports = 9, VARINT (9<<3|0 = 72): 80
        0x48, 0x90, 0x3f, // destination_ports = 9, VARINT: 8080
        0x50, 0x16, // not_destination_ports = 10, VARINT (10<<3|0 = 80): 22
    ];
    let m = security::Match::decode(bytes.as_slice()).unwrap();
    assert_eq!(m.destination_ports, [80, 8080]);
    assert_eq!(m.not_destination_ports, [22]);
    // ... and they are written back packed.
    assert_eq!(
        m.encode_to_vec(),
        [0x4a, 0x03, 0x50, 0x90, 0x3f, 0x52, 0x01, 0x16]
    );
}

#[test]
fn delta_discovery_request() {
    let bytes = cat(&[
        &[0x0a, 0x04], // node = 1, LEN: Node
        &[0x0a, 0x02], //   id = 1, LEN
        b"n1",
        &[0x12, 0x2a], // type_url = 2, LEN 42
        b"type.googleapis.com/istio.workload.Address",
        &[0x1a, 0x01], // resource_names_subscribe = 3, LEN: wildcard
        b"*",
        &[0x22, 0x03], // resource_names_unsubscribe = 4, LEN
        b"old",
        &[0x2a, 0x07], // initial_resource_versions = 5, LEN: map entry
        &[0x0a, 0x01], //   key = 1, LEN
        b"a",
        &[0x12, 0x02], //   value = 2, LEN
        b"v1",
        &[0x32, 0x02], // response_nonce = 6, LEN
        b"n7",
        &[0x3a, 0x10], // error_detail = 7, LEN 16: google.rpc.Status
        &[0x08, 0x03], //   code = 1, VARINT: 3 (INVALID_ARGUMENT)
        &[0x12, 0x03], //   message = 2, LEN
        b"bad",
        &[0x1a, 0x07], //   details = 3, LEN: Any
        &[0x0a, 0x01], //     type_url = 1, LEN
        b"t",
        &[0x12, 0x02, 0x08, 0x01], // value = 2, LEN: opaque bytes
    ]);
    let r: DeltaDiscoveryRequest = decode_canonical(&bytes);
    assert_eq!(r.node.as_ref().map(|n| n.id.as_str()), Some("n1"));
    assert_eq!(r.type_url, ADDRESS_TYPE_URL);
    assert_eq!(r.resource_names_subscribe, ["*"]);
    assert_eq!(r.resource_names_unsubscribe, ["old"]);
    assert_eq!(r.initial_resource_versions.len(), 1);
    assert_eq!(r.initial_resource_versions["a"], "v1");
    assert_eq!(r.response_nonce, "n7");
    let status = r.error_detail.as_ref().unwrap();
    assert_eq!(status.code, 3);
    assert_eq!(status.message, "bad");
    assert_eq!(status.details.len(), 1);
    assert_eq!(status.details[0].type_url, "t");
    assert_eq!(status.details[0].value, [0x08, 0x01]);
}

#[test]
fn delta_discovery_response() {
    let bytes = cat(&[
        &[0x0a, 0x02], // system_version_info = 1, LEN
        b"v9",
        &[0x12, 0x57], // resources = 2, LEN 87: Resource
        &[0x0a, 0x02], //   version = 1, LEN
        b"r1",
        &[0x12, 0x33], //   resource = 2, LEN 51: Any
        &[0x0a, 0x2a], //     type_url = 1, LEN 42
        b"type.googleapis.com/istio.workload.Address",
        &[0x12, 0x05], //     value = 2, LEN: an encoded istio.workload.Address
        &[0x12, 0x03, 0x0a, 0x01, b'b'], // service = 2 { name = 1 "b" }
        &[0x1a, 0x06], //   name = 3, LEN
        b"ns/svc",
        &[0x22, 0x0c], //   aliases = 4, LEN 12
        b"net/10.0.0.1",
        &[0x32, 0x02], //   ttl = 6, LEN: Duration
        &[0x08, 0x1e], //     seconds = 1, VARINT: 30
        &[0x3a, 0x02], //   cache_control = 7, LEN
        &[0x08, 0x01], //     do_not_cache = 1, VARINT: true
        &[0x22, 0x2a], // type_url = 4, LEN 42
        b"type.googleapis.com/istio.workload.Address",
        &[0x2a, 0x02], // nonce = 5, LEN
        b"n8",
        &[0x32, 0x03], // removed_resources = 6, LEN
        b"old",
    ]);
    let r: DeltaDiscoveryResponse = decode_canonical(&bytes);
    assert_eq!(r.system_version_info, "v9");
    assert_eq!(r.type_url, ADDRESS_TYPE_URL);
    assert_eq!(r.nonce, "n8");
    assert_eq!(r.removed_resources, ["old"]);
    assert_eq!(r.resources.len(), 1);
    let res = &r.resources[0];
    assert_eq!(res.version, "r1");
    assert_eq!(res.name, "ns/svc");
    assert_eq!(res.aliases, ["net/10.0.0.1"]);
    assert_eq!(
        res.ttl.as_ref().map(|d| (d.seconds, d.nanos)),
        Some((30, 0))
    );
    assert_eq!(
        res.cache_control.as_ref().map(|c| c.do_not_cache),
        Some(true)
    );
    let any = res.resource.as_ref().unwrap();
    assert_eq!(any.type_url, ADDRESS_TYPE_URL);
    let addr = amesh_proto::istio::workload::Address::decode(any.value.as_slice()).unwrap();
    match addr.r#type {
        Some(address::Type::Service(s)) => assert_eq!(s.name, "b"),
        other => panic!("expected a service, got {other:?}"),
    }
}

#[test]
fn state_of_the_world_discovery() {
    let req = cat(&[
        &[0x0a, 0x01, b'1'],             // version_info = 1, LEN
        &[0x12, 0x03, 0x12, 0x01, b'c'], // node = 2, LEN: Node { cluster = 2 "c" }
        &[0x1a, 0x01, b'r'],             // resource_names = 3, LEN
        &[0x22, 0x01, b't'],             // type_url = 4, LEN
        &[0x2a, 0x01, b'n'],             // response_nonce = 5, LEN
        &[0x32, 0x02, 0x08, 0x0d],       // error_detail = 6, LEN: Status { code = 1: 13 }
    ]);
    let r: DiscoveryRequest = decode_canonical(&req);
    assert_eq!(r.version_info, "1");
    assert_eq!(
        r.node,
        Some(Node {
            cluster: "c".into(),
            ..Node::default()
        })
    );
    assert_eq!(r.resource_names, ["r"]);
    assert_eq!(r.type_url, "t");
    assert_eq!(r.response_nonce, "n");
    assert_eq!(r.error_detail.map(|s| s.code), Some(13));

    let resp = cat(&[
        &[0x0a, 0x01, b'1'],             // version_info = 1, LEN
        &[0x12, 0x03, 0x0a, 0x01, b't'], // resources = 2, LEN: Any { type_url = 1 "t" }
        &[0x18, 0x01],                   // canary = 3, VARINT: true
        &[0x22, 0x01, b't'],             // type_url = 4, LEN
        &[0x2a, 0x01, b'x'],             // nonce = 5, LEN
    ]);
    let r: DiscoveryResponse = decode_canonical(&resp);
    assert_eq!(r.version_info, "1");
    assert_eq!(r.resources.len(), 1);
    assert_eq!(r.resources[0].type_url, "t");
    assert!(r.resources[0].value.is_empty());
    assert!(r.canary);
    assert_eq!(r.type_url, "t");
    assert_eq!(r.nonce, "x");
}

#[test]
fn node_metadata_and_build_version() {
    let bytes = cat(&[
        &[0x1a, 0x00], // metadata = 3, LEN 0: empty Struct
        &[0x2a, 0x02], // build_version = 5, LEN
        b"v1",
    ]);
    let n: Node = decode_canonical(&bytes);
    assert_eq!(n.metadata, Some(prost_types::Struct::default()));
    assert_eq!(n.build_version, "v1");
}

#[test]
fn certificate_request_with_impersonated_identity() {
    let bytes = cat(&[
        &[0x0a, 0x03], // csr = 1, LEN
        b"PEM",
        &[0x18, 0x80, 0xa3, 0x05], // validity_duration = 3, VARINT: 86400
        &[0x22, 0x31],             // metadata = 4, LEN 49: Struct
        &[0x0a, 0x2f],             //   fields = 1, LEN 47: map entry
        &[0x0a, 0x14],             //     key = 1, LEN 20
        b"ImpersonatedIdentity",
        &[0x12, 0x17], //     value = 2, LEN 23: google.protobuf.Value
        &[0x1a, 0x15], //       string_value = 3, LEN 21
        b"spiffe://td/ns/a/sa/b",
    ]);
    let r: IstioCertificateRequest = decode_canonical(&bytes);
    assert_eq!(r.csr, "PEM");
    assert_eq!(r.validity_duration, 86_400);
    let meta = r.metadata.as_ref().unwrap();
    assert_eq!(meta.fields.len(), 1);
    assert_eq!(
        meta.fields["ImpersonatedIdentity"].kind,
        Some(Kind::StringValue("spiffe://td/ns/a/sa/b".into()))
    );

    let chain = cat(&[
        &[0x0a, 0x04], // cert_chain = 1, LEN
        b"leaf",
        &[0x0a, 0x04], // cert_chain = 1, LEN
        b"root",
    ]);
    let r: IstioCertificateResponse = decode_canonical(&chain);
    assert_eq!(r.cert_chain, ["leaf", "root"]);
}

#[test]
fn zds_messages() {
    let add = cat(&[
        &[0x0a, 0x11], // add = 1, LEN 17: AddWorkload
        &[0x0a, 0x02], //   uid = 1, LEN
        b"u1",
        &[0x12, 0x0b], //   workload_info = 2, LEN 11: WorkloadInfo
        &[0x0a, 0x01], //     name = 1, LEN
        b"p",
        &[0x12, 0x02], //     namespace = 2, LEN
        b"ns",
        &[0x1a, 0x02], //     service_account = 3, LEN
        b"sa",
    ]);
    let r: WorkloadRequest = decode_canonical(&add);
    match r.payload {
        Some(workload_request::Payload::Add(a)) => {
            assert_eq!(a.uid, "u1");
            let info = a.workload_info.unwrap();
            assert_eq!(info.name, "p");
            assert_eq!(info.namespace, "ns");
            assert_eq!(info.service_account, "sa");
        }
        other => panic!("expected add, got {other:?}"),
    }

    // del = 2, LEN 4: DelWorkload { uid = 2 (note: field 2), LEN, "u1" }
    let del = [0x12, 0x04, 0x12, 0x02, b'u', b'1'];
    match decode_canonical::<WorkloadRequest>(&del).payload {
        Some(workload_request::Payload::Del(d)) => assert_eq!(d.uid, "u1"),
        other => panic!("expected del, got {other:?}"),
    }
    // snapshot_sent = 3, LEN 0
    assert_eq!(
        decode_canonical::<WorkloadRequest>(&[0x1a, 0x00]).payload,
        Some(workload_request::Payload::SnapshotSent(Default::default()))
    );
    // keep = 5, LEN 4: KeepWorkload { uid = 1, LEN, "u1" }
    let keep = [0x2a, 0x04, 0x0a, 0x02, b'u', b'1'];
    match decode_canonical::<WorkloadRequest>(&keep).payload {
        Some(workload_request::Payload::Keep(k)) => assert_eq!(k.uid, "u1"),
        other => panic!("expected keep, got {other:?}"),
    }

    // version = 1, VARINT: V1
    assert_eq!(
        decode_canonical::<ZdsHello>(&[0x08, 0x01]).version(),
        Version::V1
    );

    // ack = 1, LEN 6: Ack { error = 1, LEN 4, "boom" }
    let nack = cat(&[&[0x0a, 0x06, 0x0a, 0x04], b"boom"]);
    match decode_canonical::<WorkloadResponse>(&nack).payload {
        Some(workload_response::Payload::Ack(a)) => assert_eq!(a.error, "boom"),
        other => panic!("expected ack, got {other:?}"),
    }
    // ack = 1, LEN 0: success
    match decode_canonical::<WorkloadResponse>(&[0x0a, 0x00]).payload {
        Some(workload_response::Payload::Ack(a)) => assert!(a.error.is_empty()),
        other => panic!("expected ack, got {other:?}"),
    }
}
