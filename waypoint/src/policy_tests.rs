use super::*;

const SVC: &str = "shop/reviews.shop.svc.cluster.local";

fn lb(simple: pb::load_balancer::Simple) -> Option<pb::LoadBalancer> {
    Some(pb::LoadBalancer {
        simple: simple as i32,
        consistent_hash: None,
    })
}

fn pool(max_connections: u32) -> Option<pb::ConnectionPool> {
    Some(pb::ConnectionPool {
        max_connections,
        ..Default::default()
    })
}

fn policy() -> pb::DestinationPolicy {
    use pb::load_balancer::Simple;
    pb::DestinationPolicy {
        source: "shop/reviews".into(),
        traffic_policy: Some(pb::TrafficPolicy {
            load_balancer: lb(Simple::RoundRobin),
            connection_pool: pool(10),
            outlier_detection: Some(pb::OutlierDetection {
                consecutive_5xx_errors: 5,
                ..Default::default()
            }),
            port_policies: vec![pb::PortTrafficPolicy {
                port: 9080,
                load_balancer: lb(Simple::LeastRequest),
                ..Default::default()
            }],
        }),
        subsets: vec![
            pb::Subset {
                name: "v1".into(),
                workload_uids: vec!["uid-1".into()],
                traffic_policy: None,
            },
            pb::Subset {
                name: "v2".into(),
                workload_uids: vec!["uid-2".into(), "uid-3".into()],
                traffic_policy: Some(pb::TrafficPolicy {
                    connection_pool: pool(1),
                    port_policies: vec![pb::PortTrafficPolicy {
                        port: 9443,
                        load_balancer: lb(Simple::Random),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            },
        ],
    }
}

#[test]
fn fields_merge_service_port_subset_subset_port() {
    let p = DestinationPolicy::from_proto(SVC, policy()).unwrap();
    // The service, any port.
    let (svc, none) = p.level(None).unwrap();
    assert!(none.is_none());
    let e = svc.for_port(80);
    assert_eq!(e.load_balancer, Some(LoadBalancer::RoundRobin));
    assert_eq!(e.pool.unwrap().max_connections, 10);
    assert_eq!(e.outlier.unwrap().consecutive_5xx, 5);
    // Istio's defaults for the outlier fields left out.
    assert_eq!(e.outlier.unwrap().interval, Duration::from_secs(10));
    assert_eq!(e.outlier.unwrap().base_ejection, Duration::from_secs(30));
    // The service's port 9080 replaces only the load balancer.
    let e = svc.for_port(9080);
    assert_eq!(e.load_balancer, Some(LoadBalancer::LeastRequest));
    assert_eq!(e.pool.unwrap().max_connections, 10);
    // v1 has no policy of its own: the service's, per port too.
    let (v1, s) = p.level(Some("v1")).unwrap();
    assert!(s.unwrap().uids.contains("uid-1"));
    assert_eq!(
        v1.for_port(9080).load_balancer,
        Some(LoadBalancer::LeastRequest)
    );
    assert_eq!(&*v1.cluster, "shop/reviews.shop.svc.cluster.local|v1");
    // v2 replaces the pool, keeps the service's port override, adds its own on 9443.
    let (v2, _) = p.level(Some("v2")).unwrap();
    let e = v2.for_port(9080);
    assert_eq!(e.load_balancer, Some(LoadBalancer::LeastRequest));
    assert_eq!(e.pool.unwrap().max_connections, 1);
    assert_eq!(e.outlier.unwrap().consecutive_5xx, 5);
    let e = v2.for_port(9443);
    assert_eq!(e.load_balancer, Some(LoadBalancer::Random));
    assert_eq!(e.pool.unwrap().max_connections, 1);
    assert_eq!(
        v2.for_port(80).load_balancer,
        Some(LoadBalancer::RoundRobin)
    );
    assert!(p.level(Some("v3")).is_none());
}

#[test]
fn consistent_hash_keys_convert() {
    use pb::consistent_hash::{Cookie, Key};
    let with = |key| pb::LoadBalancer {
        simple: 0,
        consistent_hash: Some(pb::ConsistentHash { key: Some(key) }),
    };
    assert_eq!(
        load_balancer(&with(Key::HttpHeaderName("X-User".into()))).unwrap(),
        LoadBalancer::Hash(HashOn::Header(http::HeaderName::from_static("x-user")))
    );
    assert_eq!(
        load_balancer(&with(Key::HttpCookie(Cookie {
            name: "session".into(),
            path: "/".into(),
            ttl: Some(prost_types::Duration {
                seconds: 60,
                nanos: 0
            }),
        })))
        .unwrap(),
        LoadBalancer::Hash(HashOn::Cookie {
            name: "session".into(),
            path: Some("/".into()),
            ttl: Some(Duration::from_secs(60)),
        })
    );
    assert_eq!(
        load_balancer(&with(Key::UseSourceIp(true))).unwrap(),
        LoadBalancer::Hash(HashOn::SourceIp)
    );
    assert_eq!(
        load_balancer(&with(Key::HttpQueryParameterName("u".into()))).unwrap(),
        LoadBalancer::Hash(HashOn::QueryParameter("u".into()))
    );
}

#[test]
fn errors_name_the_resource_and_field() {
    let mut bad = policy();
    bad.subsets[1].name = "v1".into();
    let e = DestinationPolicy::from_proto(SVC, bad).unwrap_err();
    assert_eq!(e.resource, SVC);
    assert_eq!(e.field, "destination (shop/reviews).subsets[1].name");

    let mut bad = policy();
    bad.traffic_policy.as_mut().unwrap().port_policies[0].port = 70000;
    let e = DestinationPolicy::from_proto(SVC, bad).unwrap_err();
    assert_eq!(
        e.field,
        "destination (shop/reviews).traffic_policy.port_policies[0].port"
    );

    let mut bad = policy();
    bad.subsets[1]
        .traffic_policy
        .as_mut()
        .unwrap()
        .outlier_detection = Some(pb::OutlierDetection {
        max_ejection_percent: 120,
        ..Default::default()
    });
    let e = DestinationPolicy::from_proto(SVC, bad).unwrap_err();
    assert_eq!(
        e.field,
        "destination (shop/reviews).subsets[1].traffic_policy.outlier_detection.max_ejection_percent"
    );

    let mut bad = policy();
    bad.traffic_policy.as_mut().unwrap().load_balancer = Some(pb::LoadBalancer {
        simple: 0,
        consistent_hash: Some(pb::ConsistentHash {
            key: Some(pb::consistent_hash::Key::HttpCookie(
                pb::consistent_hash::Cookie {
                    name: "bad name".into(),
                    ..Default::default()
                },
            )),
        }),
    });
    let e = DestinationPolicy::from_proto(SVC, bad).unwrap_err();
    assert!(
        e.field
            .ends_with("traffic_policy.load_balancer.consistent_hash.http_cookie.name"),
        "{e}"
    );
}

#[test]
fn policies_without_limits_need_no_state() {
    let p = DestinationPolicy::from_proto(
        SVC,
        pb::DestinationPolicy {
            source: "shop/reviews".into(),
            traffic_policy: Some(pb::TrafficPolicy {
                load_balancer: lb(pb::load_balancer::Simple::Random),
                connection_pool: Some(pb::ConnectionPool {
                    connect_timeout: Some(prost_types::Duration {
                        seconds: 0,
                        nanos: 250_000_000,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            subsets: vec![],
        },
    )
    .unwrap();
    // A connect timeout alone is no limit to count.
    assert!(!p.service.for_port(80).stateful());
    assert_eq!(
        p.service.for_port(80).pool.unwrap().connect_timeout,
        Some(Duration::from_millis(250))
    );
    let p = DestinationPolicy::from_proto(SVC, policy()).unwrap();
    assert!(p.service.for_port(80).stateful());
}
