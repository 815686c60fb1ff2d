//! mesh::state: proto conversion, snapshot indexes, the store's all-or-nothing deltas, and
//! the local file (format, errors, round trip, watcher).

use std::net::IpAddr;
use std::time::Duration;

use amesh_proto::envoy::service::discovery::v3::Resource;
use amesh_proto::istio::security as sec;
use amesh_proto::istio::workload as wl;
use amesh_proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};
use mesh::state::{
    AppProtocol, ApplyError, ConvertError, GatewayDestination, LocalConfig, LocalConfigError,
    Model, PolicyScope, Problem, RejectReason, ResourceKind, Snapshot, StateStore, StringMatch,
    TunnelProtocol,
};
use prost::Message;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn octets(s: &str) -> Vec<u8> {
    match ip(s) {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn pw(ns: &str, name: &str, sa: &str, ips: &[&str]) -> wl::Workload {
    wl::Workload {
        uid: format!("Kubernetes//v1/Pod/{ns}/{name}"),
        name: name.into(),
        namespace: ns.into(),
        service_account: sa.into(),
        trust_domain: "cluster.local".into(),
        addresses: ips.iter().map(|i| octets(i)).collect(),
        tunnel_protocol: wl::TunnelProtocol::Hbone as i32,
        node: "node-1".into(),
        ..Default::default()
    }
}

fn ports(pairs: &[(u32, u32)]) -> wl::PortList {
    wl::PortList {
        ports: pairs
            .iter()
            .map(|(s, t)| wl::Port {
                service_port: *s,
                target_port: *t,
                app_protocol: 0,
            })
            .collect(),
    }
}

fn ps(ns: &str, name: &str, vip: &str, pairs: &[(u32, u32)]) -> wl::Service {
    wl::Service {
        name: name.into(),
        namespace: ns.into(),
        hostname: format!("{name}.{ns}.svc.cluster.local"),
        addresses: vec![wl::NetworkAddress {
            network: String::new(),
            address: octets(vip),
            length: None,
        }],
        ports: ports(pairs).ports,
        ..Default::default()
    }
}

fn pp(ns: &str, name: &str, scope: sec::Scope, action: sec::Action) -> sec::Authorization {
    sec::Authorization {
        name: name.into(),
        namespace: ns.into(),
        scope: scope as i32,
        action: action as i32,
        rules: vec![sec::Rule {
            clauses: vec![sec::Clause {
                matches: vec![sec::Match {
                    principals: vec![sec::StringMatch {
                        match_type: Some(sec::string_match::MatchType::Presence(())),
                    }],
                    destination_ports: vec![8080],
                    ..Default::default()
                }],
            }],
        }],
        ..Default::default()
    }
}

fn addr_w(w: wl::Workload) -> wl::Address {
    wl::Address {
        r#type: Some(wl::address::Type::Workload(w)),
    }
}

fn addr_s(s: wl::Service) -> wl::Address {
    wl::Address {
        r#type: Some(wl::address::Type::Service(s)),
    }
}

fn resource(name: &str, type_url: &str, body: Vec<u8>) -> Resource {
    Resource {
        name: name.into(),
        version: "1".into(),
        resource: Some(prost_types::Any {
            type_url: type_url.into(),
            value: body,
        }),
        ..Default::default()
    }
}

fn res_w(w: wl::Workload) -> Resource {
    resource(&w.uid.clone(), ADDRESS_TYPE_URL, addr_w(w).encode_to_vec())
}

fn res_s(s: wl::Service) -> Resource {
    let name = format!("{}/{}", s.namespace, s.hostname);
    resource(&name, ADDRESS_TYPE_URL, addr_s(s).encode_to_vec())
}

fn res_p(p: sec::Authorization) -> Resource {
    let name = format!("{}/{}", p.namespace, p.name);
    resource(&name, AUTHORIZATION_TYPE_URL, p.encode_to_vec())
}

/// A small mesh: two pods of `web` behind a service, one `db` pod, policies of every scope.
fn sample() -> (Vec<wl::Address>, Vec<sec::Authorization>) {
    let mut web1 = pw("shop", "web-1", "web", &["10.0.0.1", "fd00::1"]);
    web1.services.insert(
        "shop/web.shop.svc.cluster.local".into(),
        ports(&[(80, 8080)]),
    );
    web1.authorization_policies = vec!["shop/web-only".into(), "shop/web-only".into()];
    web1.canonical_name = "web".into();
    web1.canonical_revision = "v1".into();
    web1.workload_name = "web".into();
    web1.cluster_id = "Kubernetes".into();
    web1.waypoint = Some(wl::GatewayAddress {
        destination: Some(wl::gateway_address::Destination::Hostname(
            wl::NamespacedHostname {
                namespace: "shop".into(),
                hostname: "waypoint.shop.svc.cluster.local".into(),
            },
        )),
        hbone_mtls_port: 15008,
    });
    let mut web2 = pw("shop", "web-2", "web", &["10.0.0.2"]);
    web2.services.insert(
        "shop/web.shop.svc.cluster.local".into(),
        ports(&[(80, 9090)]),
    );
    web2.status = wl::WorkloadStatus::Unhealthy as i32;
    let mut db = pw("data", "db-0", "", &["10.0.1.1"]);
    db.tunnel_protocol = wl::TunnelProtocol::None as i32;
    db.trust_domain = String::new();
    db.network = "net2".into();
    let mut svc = ps("shop", "web", "10.96.0.10", &[(443, 8443), (80, 0)]);
    svc.ports[0].app_protocol = wl::AppProtocol::Tls as i32;
    svc.subject_alt_names = vec!["spiffe://cluster.local/ns/shop/sa/web".into()];
    svc.waypoint = Some(wl::GatewayAddress {
        destination: Some(wl::gateway_address::Destination::Address(
            wl::NetworkAddress {
                network: String::new(),
                address: octets("10.0.9.9"),
                length: Some(32),
            },
        )),
        hbone_mtls_port: 15008,
    });
    let addresses = vec![
        addr_w(web1),
        addr_w(web2),
        addr_w(db),
        addr_s(svc),
        addr_s(ps("data", "db", "10.96.0.20", &[(5432, 5432)])),
    ];
    let mut strict = pp(
        "istio-system",
        "strict",
        sec::Scope::Global,
        sec::Action::Deny,
    );
    strict.rules[0].clauses[0].matches[0] = sec::Match {
        not_principals: vec![sec::StringMatch {
            match_type: Some(sec::string_match::MatchType::Presence(())),
        }],
        not_destination_ports: vec![15021],
        source_ips: vec![sec::Address {
            address: octets("10.0.0.0"),
            length: 8,
        }],
        namespaces: vec![sec::StringMatch {
            match_type: Some(sec::string_match::MatchType::Prefix("sh".into())),
        }],
        service_accounts: vec![sec::ServiceAccountMatch {
            namespace: "shop".into(),
            service_account: "web".into(),
        }],
        ..Default::default()
    };
    strict.dry_run = true;
    let policies = vec![
        strict,
        pp("shop", "ns-wide", sec::Scope::Namespace, sec::Action::Allow),
        pp("data", "ns-wide", sec::Scope::Namespace, sec::Action::Allow),
        pp(
            "shop",
            "web-only",
            sec::Scope::WorkloadSelector,
            sec::Action::Allow,
        ),
        pp(
            "shop",
            "unused",
            sec::Scope::WorkloadSelector,
            sec::Action::Deny,
        ),
        sec::Authorization {
            rules: vec![],
            ..pp(
                "shop",
                "empty",
                sec::Scope::WorkloadSelector,
                sec::Action::Allow,
            )
        },
    ];
    (addresses, policies)
}

#[test]
fn converts_protos_into_the_model() {
    let (addresses, policies) = sample();
    let model = Model::from_protos(&addresses, &policies).unwrap();
    let web1 = &model.workloads[0];
    assert_eq!(web1.uid, "Kubernetes//v1/Pod/shop/web-1");
    assert_eq!(web1.addresses, vec![ip("10.0.0.1"), ip("fd00::1")]);
    assert_eq!(web1.protocol, TunnelProtocol::Hbone);
    assert_eq!(
        web1.identity().to_string(),
        "spiffe://cluster.local/ns/shop/sa/web"
    );
    // Duplicate policy references collapse.
    assert_eq!(web1.authorization_policies, vec!["shop/web-only"]);
    assert_eq!(web1.services["shop/web.shop.svc.cluster.local"][&80], 8080);
    assert!(web1.healthy);
    assert!(!model.workloads[1].healthy);
    // Istio's defaults for an empty trust domain and service account; NONE is plain TCP.
    let db = &model.workloads[2];
    assert_eq!(
        db.identity().to_string(),
        "spiffe://cluster.local/ns/data/sa/default"
    );
    assert_eq!(db.protocol, TunnelProtocol::Tcp);

    let svc = &model.services[0];
    assert_eq!(svc.key(), "shop/web.shop.svc.cluster.local");
    // Ports come out sorted whatever order they were sent in.
    assert_eq!(svc.ports[0].service_port, 80);
    assert_eq!(svc.ports[1].app_protocol, AppProtocol::Tls);
    assert!(matches!(
        svc.waypoint.as_ref().unwrap().destination,
        GatewayDestination::Address(ref a) if a.address == ip("10.0.9.9")
    ));

    let strict = &model.policies[0];
    assert_eq!(strict.key(), "istio-system/strict");
    assert_eq!(strict.scope, PolicyScope::Global);
    let m = &strict.rules[0].clauses[0].matches[0];
    assert_eq!(m.not_principals, vec![StringMatch::Presence]);
    assert_eq!(m.source_ips, vec!["10.0.0.0/8".parse().unwrap()]);
}

#[test]
fn conversion_errors_name_resource_and_field() {
    let bad_ip = wl::Workload {
        addresses: vec![octets("10.0.0.1"), vec![1, 2, 3, 4, 5]],
        ..pw("shop", "a", "sa", &[])
    };
    let bad_enum = wl::Workload {
        tunnel_protocol: 7,
        ..pw("shop", "b", "sa", &[])
    };
    let bad_sa = pw("shop", "c", "no/slash", &[]);
    let bad_td = wl::Workload {
        trust_domain: "Upper.Case".into(),
        ..pw("shop", "d", "sa", &[])
    };
    let mut bad_port = ps("shop", "s", "10.96.0.1", &[(80, 8080)]);
    bad_port.ports.push(wl::Port {
        service_port: 70000,
        target_port: 1,
        app_protocol: 0,
    });
    let mut bad_vip = ps("shop", "v", "10.96.0.1", &[]);
    bad_vip.addresses[0].length = Some(24);
    let cases: Vec<(wl::Address, &str, &str, Problem)> = vec![
        (
            addr_w(bad_ip),
            "Kubernetes//v1/Pod/shop/a",
            "addresses[1]",
            Problem::AddressLength(5),
        ),
        (
            addr_w(bad_enum),
            "Kubernetes//v1/Pod/shop/b",
            "tunnel_protocol",
            Problem::UnknownEnum(7),
        ),
        (
            addr_w(wl::Workload {
                uid: String::new(),
                ..pw("shop", "e", "sa", &[])
            }),
            "e",
            "uid",
            Problem::Missing,
        ),
        (
            addr_s(bad_port),
            "shop/s.shop.svc.cluster.local",
            "ports[1].service_port",
            Problem::Port(70000),
        ),
        (
            addr_s(bad_vip),
            "shop/v.shop.svc.cluster.local",
            "addresses[0].length",
            Problem::NotSingleAddress { len: 24 },
        ),
    ];
    for (address, name, field, problem) in cases {
        let err = Model::from_protos(&[address], &[]).unwrap_err();
        assert_eq!(
            (err.name.as_str(), err.field.as_str()),
            (name, field),
            "{err}"
        );
        assert_eq!(err.problem, problem, "{err}");
        assert!(err.to_string().contains(name) && err.to_string().contains(field));
    }
    for (w, field) in [(bad_sa, "service_account"), (bad_td, "trust_domain")] {
        let err = Model::from_protos(&[addr_w(w)], &[]).unwrap_err();
        assert_eq!(err.field, field, "{err}");
        assert!(matches!(err.problem, Problem::Identity(_)), "{err}");
    }

    let mut no_type = pp("shop", "p", sec::Scope::Global, sec::Action::Allow);
    no_type.rules[0].clauses[0].matches[0].not_principals =
        vec![sec::StringMatch { match_type: None }];
    let mut long_prefix = pp("shop", "q", sec::Scope::Global, sec::Action::Allow);
    long_prefix.rules[0].clauses[0].matches[0].source_ips = vec![sec::Address {
        address: octets("10.0.0.0"),
        length: 33,
    }];
    let unknown_action = sec::Authorization {
        action: 5,
        ..pp("shop", "r", sec::Scope::Global, sec::Action::Allow)
    };
    let cases = [
        (
            no_type,
            "rules[0].clauses[0].matches[0].not_principals[0]",
            Problem::EmptyStringMatch,
        ),
        (
            long_prefix,
            "rules[0].clauses[0].matches[0].source_ips[0]",
            Problem::PrefixLength {
                ip: ip("10.0.0.0"),
                len: 33,
            },
        ),
        (unknown_action, "action", Problem::UnknownEnum(5)),
    ];
    for (p, field, problem) in cases {
        let err: ConvertError = Model::from_protos(&[], &[p]).unwrap_err();
        assert_eq!(err.kind, ResourceKind::Policy);
        assert_eq!(
            (err.field.as_str(), err.problem.clone()),
            (field, problem),
            "{err}"
        );
    }
}

#[test]
fn snapshot_indexes() {
    let (addresses, policies) = sample();
    let snap = Snapshot::new(Model::from_protos(&addresses, &policies).unwrap());
    let web1 = snap.workload_by_ip(ip("10.0.0.1")).unwrap();
    assert_eq!(web1.name, "web-1");
    assert_eq!(snap.workload_by_ip(ip("fd00::1")).unwrap().name, "web-1");
    // db-0 lives on another network: not found on the default one.
    assert!(snap.workload_by_ip(ip("10.0.1.1")).is_none());
    assert_eq!(
        snap.workload_by_network_ip("net2", ip("10.0.1.1"))
            .unwrap()
            .name,
        "db-0"
    );
    assert_eq!(
        snap.workload_by_uid("Kubernetes//v1/Pod/shop/web-2")
            .unwrap()
            .name,
        "web-2"
    );

    let svc = snap.service_by_vip(ip("10.96.0.10")).unwrap();
    assert_eq!(svc.name, "web");
    assert_eq!(
        snap.service_by_host("web.shop.svc.cluster.local")
            .unwrap()
            .key(),
        svc.key()
    );
    assert!(snap.service(&svc.key()).is_some());
    let eps = snap.endpoints(&svc.key());
    let got: Vec<_> = eps
        .iter()
        .map(|e| (e.workload.name.as_str(), e.port_map[&80]))
        .collect();
    assert_eq!(got, vec![("web-1", 8080), ("web-2", 9090)]);
    assert!(snap.endpoints("shop/nothing").is_empty());

    let keys = |w: &mesh::state::Workload| -> Vec<String> {
        snap.policies_for(w).map(|p| p.key()).collect()
    };
    // Global, then the namespace's, then named ones (each once; missing names skipped).
    assert_eq!(
        keys(web1),
        vec!["istio-system/strict", "shop/ns-wide", "shop/web-only"]
    );
    let web2 = snap.workload_by_ip(ip("10.0.0.2")).unwrap();
    assert_eq!(keys(web2), vec!["istio-system/strict", "shop/ns-wide"]);
    let db = snap.workload_by_network_ip("net2", ip("10.0.1.1")).unwrap();
    assert_eq!(keys(db), vec!["istio-system/strict", "data/ns-wide"]);
    // A named policy that is also namespace-wide is not yielded twice.
    let mut both = (**web1).clone();
    both.authorization_policies = vec!["shop/ns-wide".into(), "istio-system/strict".into()];
    assert_eq!(keys(&both), vec!["istio-system/strict", "shop/ns-wide"]);

    assert_eq!(snap.workloads().count(), 3);
    assert_eq!(snap.services().count(), 2);
    assert_eq!(snap.policies().count(), 6);
}

#[test]
fn two_workloads_on_one_ip_prefer_the_healthy_one() {
    let old = wl::Workload {
        status: wl::WorkloadStatus::Unhealthy as i32,
        ..pw("shop", "a-old", "sa", &["10.0.0.7"])
    };
    let new = pw("shop", "b-new", "sa", &["10.0.0.7"]);
    let snap = Snapshot::new(Model::from_protos(&[addr_w(old), addr_w(new)], &[]).unwrap());
    assert_eq!(snap.workload_by_ip(ip("10.0.0.7")).unwrap().name, "b-new");
}

#[tokio::test]
async fn apply_delta_is_all_or_nothing() {
    let store = StateStore::new();
    let mut changes = store.subscribe();
    let (addresses, policies) = sample();
    let upserts: Vec<Resource> = addresses
        .iter()
        .map(|a| match a.r#type.clone().unwrap() {
            wl::address::Type::Workload(w) => res_w(w),
            wl::address::Type::Service(s) => res_s(s),
        })
        .collect();
    store.apply_delta(ADDRESS_TYPE_URL, upserts, &[]).unwrap();
    store
        .apply_delta(
            AUTHORIZATION_TYPE_URL,
            policies.into_iter().map(res_p).collect(),
            &[],
        )
        .unwrap();
    assert!(changes.has_changed().unwrap());
    assert_eq!(*changes.borrow_and_update(), 2);
    let before = store.snapshot();
    assert_eq!(before.version(), 2);
    assert_eq!(before.workloads().count(), 3);
    assert_eq!(before.policies().count(), 6);

    // One good resource and three bad ones: nothing applies, every bad one is named.
    let good = res_w(pw("shop", "new", "sa", &["10.0.0.9"]));
    let bad_body = resource("broken", ADDRESS_TYPE_URL, vec![0xff, 0xff, 0xff]);
    let bad_ip = res_w(wl::Workload {
        addresses: vec![vec![1, 2, 3]],
        ..pw("shop", "bad", "sa", &[])
    });
    let mut misnamed = res_w(pw("shop", "x", "sa", &[]));
    misnamed.name = "wrong-name".into();
    let err = store
        .apply_delta(
            ADDRESS_TYPE_URL,
            vec![good, bad_body, bad_ip, misnamed],
            &[],
        )
        .unwrap_err();
    let ApplyError::Rejected(rejected) = &err else {
        panic!("{err}")
    };
    let names: Vec<_> = rejected.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        vec!["broken", "Kubernetes//v1/Pod/shop/bad", "wrong-name"]
    );
    assert!(matches!(rejected[0].reason, RejectReason::Decode(_)));
    assert!(matches!(
        &rejected[1].reason,
        RejectReason::Convert(e) if e.problem == Problem::AddressLength(3)
    ));
    assert!(matches!(rejected[2].reason, RejectReason::Name { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("addresses[0]") && msg.contains("wrong-name"),
        "{msg}"
    );
    assert!(!changes.has_changed().unwrap());
    assert!(std::sync::Arc::ptr_eq(&before, &store.snapshot()));

    // A body of the other type, and an unknown type URL.
    let wrong_type = resource("shop/p", AUTHORIZATION_TYPE_URL, vec![]);
    let err = store
        .apply_delta(ADDRESS_TYPE_URL, vec![wrong_type], &[])
        .unwrap_err();
    assert!(
        err.to_string().contains("istio.security.Authorization"),
        "{err}"
    );
    let err = store
        .apply_delta("type.googleapis.com/foo", vec![], &[])
        .unwrap_err();
    assert!(matches!(err, ApplyError::UnknownType(_)));

    // Removal by name (unknown names ignored), and an upsert of the same content changes nothing.
    store
        .apply_delta(
            ADDRESS_TYPE_URL,
            vec![],
            &[
                "Kubernetes//v1/Pod/shop/web-2".into(),
                "shop/web.shop.svc.cluster.local".into(),
                "never-heard-of".into(),
            ],
        )
        .unwrap();
    let snap = store.snapshot();
    assert_eq!(snap.version(), 3);
    assert!(snap.workload_by_ip(ip("10.0.0.2")).is_none());
    assert!(snap.service_by_vip(ip("10.96.0.10")).is_none());
    // Endpoints still come from the remaining workload's services map.
    assert_eq!(snap.endpoints("shop/web.shop.svc.cluster.local").len(), 1);
    let (_, policies) = sample();
    store
        .apply_delta(
            AUTHORIZATION_TYPE_URL,
            vec![res_p(policies[1].clone())],
            &[],
        )
        .unwrap();
    assert_eq!(store.snapshot().version(), 3);
    store
        .apply_delta(AUTHORIZATION_TYPE_URL, vec![], &["shop/ns-wide".into()])
        .unwrap();
    assert_eq!(store.snapshot().version(), 4);
    assert!(store.snapshot().policy("shop/ns-wide").is_none());
}

const EXAMPLE: &str = r#"
workloads:
- name: cart-0
  namespace: shop
  serviceAccount: cart
  workloadIps: [10.0.1.5]
  protocol: HBONE
  node: node-1
  services:
    shop/cart.shop.svc.cluster.local: {80: 8080}
  authorizationPolicies: [shop/cart-only]
  workloadType: pod
  status: Unhealthy
  waypoint: {destination: {namespace: shop, hostname: wp.shop.svc.cluster.local}, hboneMtlsPort: 15008}
services:
- name: cart
  namespace: shop
  hostname: cart.shop.svc.cluster.local
  vips: [/10.96.0.20, net2/10.97.0.20, 10.98.0.20]
  ports:
  - {servicePort: 81, targetPort: 8081, appProtocol: HTTP2}
  - {servicePort: 80, targetPort: 8080}
policies:
- name: cart-only
  namespace: shop
  scope: WorkloadSelector
  action: Allow
  rules:
  - - - principals: [{exact: cluster.local/ns/shop/sa/web}, {Prefix: "cluster.local/ns/ops/"}]
        destinationPorts: [8080]
      - sourceIps: [10.0.0.0/8, 192.168.1.1]
    - - notNamespaces: [{presence: {}}]
"#;

#[test]
fn local_file_format() {
    let model = LocalConfig::from_yaml(EXAMPLE)
        .unwrap()
        .into_model()
        .unwrap();
    let w = &model.workloads[0];
    assert_eq!(w.uid, "//v1/Pod/shop/cart-0");
    assert_eq!(
        w.identity().to_string(),
        "spiffe://cluster.local/ns/shop/sa/cart"
    );
    assert_eq!(w.protocol, TunnelProtocol::Hbone);
    assert!(!w.healthy);
    assert!(matches!(
        w.waypoint.as_ref().unwrap().destination,
        GatewayDestination::Hostname(ref h) if h.hostname == "wp.shop.svc.cluster.local"
    ));
    let s = &model.services[0];
    let vips: Vec<String> = s.vips.iter().map(|v| v.to_string()).collect();
    assert_eq!(vips, vec!["/10.96.0.20", "net2/10.97.0.20", "/10.98.0.20"]);
    assert_eq!(
        s.ports.iter().map(|p| p.service_port).collect::<Vec<_>>(),
        vec![80, 81]
    );
    assert_eq!(s.ports[1].app_protocol, AppProtocol::Http2);
    let p = &model.policies[0];
    assert_eq!(p.rules.len(), 1);
    assert_eq!(p.rules[0].clauses.len(), 2);
    assert_eq!(p.rules[0].clauses[0].matches.len(), 2);
    assert_eq!(
        p.rules[0].clauses[0].matches[0].principals[1],
        StringMatch::Prefix("cluster.local/ns/ops/".into())
    );
    assert_eq!(
        p.rules[0].clauses[0].matches[1].source_ips[1],
        "192.168.1.1/32".parse().unwrap()
    );
    assert_eq!(
        p.rules[0].clauses[1].matches[0].not_namespaces,
        vec![StringMatch::Presence]
    );
    // Comment-only and empty files are empty configs.
    assert_eq!(
        LocalConfig::from_yaml("# nothing yet\n").unwrap(),
        LocalConfig::default()
    );
}

#[test]
fn local_file_errors_name_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "workloads:\n- name: a\n  namespace: b\n  serviceAcount: x\n",
            "serviceAcount",
        ),
        ("policies:\n- name: a\n  namespace: b\n  scope: Global\n  action: Allow\n  rules: [[[{principal: []}]]]\n", "principal"),
        ("polices: []\n", "polices"),
        ("policies:\n- name: a\n  namespace: b\n  scope: Global\n  action: Maybe\n", "Maybe"),
        ("services:\n- {name: a, namespace: b, hostname: c, vips: [10.0.0.0/8]}\n", "10.0.0.0/8"),
        (
            "policies:\n- {name: a, namespace: b, scope: Global, action: Deny, rules: [[[{principals: [{}]}]]]}\n",
            "exactly one of exact, prefix, suffix or presence",
        ),
    ];
    for (i, (text, needle)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad-{i}.yaml"));
        std::fs::write(&path, text).unwrap();
        let err = LocalConfig::load(&path).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, LocalConfigError::Parse { .. }), "{msg}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains(needle), "{needle}: {msg}");
    }

    // Semantic errors (after parsing) also name file, resource and field.
    let path = dir.path().join("semantic.yaml");
    std::fs::write(
        &path,
        "workloads:\n- {uid: u1, name: a, namespace: shop, serviceAccount: 'bad/sa'}\n",
    )
    .unwrap();
    let err = LocalConfig::load(&path).unwrap().into_model().unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("semantic.yaml") && msg.contains("u1") && msg.contains("serviceAccount"),
        "{msg}"
    );
    let err = LocalConfig::from_yaml(
        "workloads:\n- {uid: u1, name: a, namespace: shop}\n- {uid: u1, name: b, namespace: shop}\n",
    )
    .unwrap()
    .into_model()
    .unwrap_err();
    assert!(matches!(err, LocalConfigError::Duplicate { .. }), "{err}");
    let err = LocalConfig::load(dir.path().join("missing.yaml")).unwrap_err();
    assert!(err.to_string().contains("missing.yaml"), "{err}");
}

#[test]
fn local_file_round_trips_the_model() {
    let (addresses, policies) = sample();
    let direct = Model::from_protos(&addresses, &policies).unwrap();
    let config = LocalConfig::from_resources(&addresses, &policies).unwrap();
    let yaml = config.to_yaml().unwrap();
    let reread = LocalConfig::from_yaml(&yaml).unwrap();
    assert_eq!(reread, config, "{yaml}");
    assert_eq!(reread.into_model().unwrap(), direct, "{yaml}");
    // Ports without app protocol use Istio's map form.
    assert!(yaml.contains("5432: 5432"), "{yaml}");
    // And through a snapshot.
    let snap = Snapshot::new(direct.clone());
    let from_snap = LocalConfig::from_snapshot(&snap).into_model().unwrap();
    assert_eq!(Snapshot::new(from_snap).to_model(), snap.to_model());
}

#[tokio::test]
async fn replace_all_and_watch_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, EXAMPLE).unwrap();
    let store = StateStore::new();
    mesh::state::load_file(&path, &store).unwrap();
    assert_eq!(store.snapshot().version(), 1);

    let mut changes = store.subscribe();
    changes.borrow_and_update();
    let watcher = mesh::state::watch_file(&path, store.clone());
    // The first poll sees the same content: no new version.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(store.snapshot().version(), 1);

    // An invalid edit keeps the last good config.
    std::fs::write(&path, "workloads: [{name: x}]\n").unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(store.snapshot().version(), 1);
    assert_eq!(store.snapshot().workloads().count(), 1);

    // A valid edit is applied and announced.
    std::fs::write(&path, "services: []\n").unwrap();
    tokio::time::timeout(Duration::from_secs(5), changes.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(store.snapshot().version(), 2);
    assert_eq!(store.snapshot().workloads().count(), 0);
    watcher.abort();
}
