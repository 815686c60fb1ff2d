use super::*;
use amesh_proto::amesh::l7::v1 as pb;

fn route(name: &str, m: pb::RouteMatch, backends: &[(&str, u32)]) -> pb::Route {
    pb::Route {
        route_name: name.into(),
        route_kind: "HTTPRoute".into(),
        r#match: Some(m),
        backends: backends
            .iter()
            .map(|(s, w)| pb::Backend {
                service: (*s).into(),
                port: 9080,
                weight: *w,
                filters: vec![],
                subset: String::new(),
            })
            .collect(),
        ..Default::default()
    }
}

fn table(routes: Vec<pb::Route>) -> RouteTable {
    RouteTable::from_proto(pb::ServiceRoutes {
        name: "bookinfo/reviews.bookinfo.svc.cluster.local".into(),
        routes,
        ..Default::default()
    })
    .unwrap()
}

fn find<'t>(
    t: &'t RouteTable,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
) -> Option<&'t str> {
    let method: Method = method.parse().unwrap();
    let uri: http::Uri = uri.parse().unwrap();
    let mut h = HeaderMap::new();
    for (k, v) in headers {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    t.find(&RouteView {
        method: &method,
        path: uri.path(),
        query: uri.query(),
        headers: &h,
        port: 9080,
    })
    .map(|r| r.route_name.as_str())
}

#[test]
fn matches_in_order_with_gateway_api_semantics() {
    let t = table(vec![
        route(
            "jason",
            pb::RouteMatch {
                headers: vec![pb::HeaderMatch {
                    name: "End-User".into(),
                    value: "jason".into(),
                    regex: false,
                }],
                ..Default::default()
            },
            &[("v2", 1)],
        ),
        route(
            "exact",
            pb::RouteMatch {
                path: Some(pb::PathMatch {
                    kind: pb::path_match::Kind::Exact as i32,
                    value: "/exact".into(),
                }),
                ..Default::default()
            },
            &[("v1", 1)],
        ),
        route(
            "prefix",
            pb::RouteMatch {
                path: Some(pb::PathMatch {
                    kind: pb::path_match::Kind::PathPrefix as i32,
                    value: "/api/".into(),
                }),
                method: "POST".into(),
                ..Default::default()
            },
            &[("v1", 1)],
        ),
        route(
            "query",
            pb::RouteMatch {
                query_params: vec![pb::QueryParamMatch {
                    name: "v".into(),
                    value: "[0-9]+".into(),
                    regex: true,
                }],
                ..Default::default()
            },
            &[("v1", 1)],
        ),
        route(
            "regex",
            pb::RouteMatch {
                path: Some(pb::PathMatch {
                    kind: pb::path_match::Kind::RegularExpression as i32,
                    value: "/r/[a-z]+".into(),
                }),
                ..Default::default()
            },
            &[("v1", 1)],
        ),
    ]);
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], Option<&'a str>);
    let cases: &[Case] = &[
        ("GET", "/anything", &[("end-user", "jason")], Some("jason")),
        ("GET", "/anything", &[("end-user", "Jason")], None),
        ("GET", "/exact", &[], Some("exact")),
        ("GET", "/exact/more", &[], None),
        ("POST", "/api", &[], Some("prefix")),
        ("POST", "/api/v1", &[], Some("prefix")),
        // A prefix matches whole segments only.
        ("POST", "/apis", &[], None),
        ("GET", "/api/v1", &[], None),
        ("GET", "/x?v=12&v=a", &[], Some("query")),
        ("GET", "/x?v=a&v=12", &[], None),
        ("GET", "/r/abc", &[], Some("regex")),
        // Regexes match the whole path.
        ("GET", "/r/abc/d", &[], None),
    ];
    for (method, uri, headers, want) in cases {
        assert_eq!(
            find(&t, method, uri, headers),
            *want,
            "{method} {uri} {headers:?}"
        );
    }
}

#[test]
fn routes_cover_only_their_port() {
    let mut r = route("p80", pb::RouteMatch::default(), &[("v1", 1)]);
    r.port = 80;
    let t = table(vec![r]);
    assert!(t.covers(80));
    assert!(!t.covers(81));
    let any = table(vec![route("all", pb::RouteMatch::default(), &[("v1", 1)])]);
    assert!(any.covers(81));
}

#[test]
fn weights_split_by_roll() {
    let t = table(vec![route(
        "split",
        pb::RouteMatch::default(),
        &[("v1", 90), ("v2", 10)],
    )]);
    let r = &t.routes[0];
    let mut v2 = 0;
    for roll in 0..1000u64 {
        if r.pick_backend(roll).unwrap().service == "v2" {
            v2 += 1;
        }
    }
    assert_eq!(v2, 100);
    let none = table(vec![route("zero", pb::RouteMatch::default(), &[("v1", 0)])]);
    assert!(none.routes[0].pick_backend(7).is_none());
}

#[test]
fn bad_regex_names_the_route_and_field() {
    let e = RouteTable::from_proto(pb::ServiceRoutes {
        name: "ns/svc".into(),
        routes: vec![route(
            "ns/broken",
            pb::RouteMatch {
                path: Some(pb::PathMatch {
                    kind: pb::path_match::Kind::RegularExpression as i32,
                    value: "(".into(),
                }),
                ..Default::default()
            },
            &[],
        )],
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("ns/svc") && e.contains("ns/broken") && e.contains("match.path.value"),
        "{e}"
    );
}

#[test]
fn path_rewrites() {
    let full = PathModifier::Full("/new".into());
    assert_eq!(rewrite_path("/old/x", &full, Some("/old")), "/new");
    let prefix = PathModifier::Prefix("/v2".into());
    assert_eq!(rewrite_path("/v1/items", &prefix, Some("/v1")), "/v2/items");
    assert_eq!(rewrite_path("/v1", &prefix, Some("/v1")), "/v2");
    let root = PathModifier::Prefix("/".into());
    assert_eq!(rewrite_path("/v1/items", &root, Some("/v1")), "/items");
    assert_eq!(rewrite_path("/v1", &root, Some("/v1")), "/");
}

#[test]
fn a_table_with_only_a_destination_policy_leaves_default_routing() {
    let t = RouteTable::from_proto(pb::ServiceRoutes {
        name: "bookinfo/reviews.bookinfo.svc.cluster.local".into(),
        routes: vec![],
        destination: Some(pb::DestinationPolicy {
            source: "bookinfo/reviews".into(),
            subsets: vec![pb::Subset {
                name: "v1".into(),
                workload_uids: vec!["uid-1".into()],
                traffic_policy: None,
            }],
            ..Default::default()
        }),
        ..Default::default()
    })
    .unwrap();
    // No port is covered: the pipeline takes the default path, not 404.
    assert!(!t.covers(9080));
    assert!(!t.covers(0));
    assert!(find(&t, "GET", "/", &[]).is_none());
    let d = t.destination.as_ref().unwrap();
    assert_eq!(d.source, "bookinfo/reviews");
    assert!(d.level(Some("v1")).is_some());
}

#[test]
fn retry_fault_and_subset_convert() {
    let mut r = route("ns/vs", pb::RouteMatch::default(), &[("ns/svc", 1)]);
    r.backends[0].subset = "v2".into();
    r.retry = Some(pb::RetryPolicy {
        attempts: 3,
        per_try_timeout: Some(prost_types::Duration {
            seconds: 2,
            nanos: 0,
        }),
        retry_on: vec!["5xx".into(), "connect-failure".into()],
        other_host: true,
        ..Default::default()
    });
    r.fault = Some(pb::FaultInjection {
        delay: None,
        abort: Some(pb::fault_injection::Abort {
            http_status: 503,
            grpc_status: 0,
            percent: 10.0,
        }),
    });
    let t = table(vec![r]);
    let route = &t.routes[0];
    assert_eq!(route.backends[0].subset.as_deref(), Some("v2"));
    let retry = route.retry.as_ref().unwrap();
    assert_eq!(retry.attempts, 3);
    assert_eq!(retry.per_try_timeout, Some(Duration::from_secs(2)));
    assert!(retry.other_host);
    let fault = route.fault.as_ref().unwrap();
    assert_eq!(
        fault.abort,
        Some((
            crate::fault::Abort::Http(http::StatusCode::SERVICE_UNAVAILABLE),
            10.0
        ))
    );
    assert!(t.destination.is_none());
}

#[test]
fn bad_retry_and_fault_fields_are_named() {
    let mut r = route("ns/vs", pb::RouteMatch::default(), &[("ns/svc", 1)]);
    r.retry = Some(pb::RetryPolicy {
        attempts: 2,
        retry_on: vec!["on-tuesdays".into()],
        ..Default::default()
    });
    let e = RouteTable::from_proto(pb::ServiceRoutes {
        name: "ns/svc".into(),
        routes: vec![r],
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!(e.resource, "ns/svc");
    assert_eq!(e.field, "routes[0] (ns/vs).retry.retry_on[0]");
    assert!(e.problem.contains("on-tuesdays"));

    let mut r = route("ns/vs", pb::RouteMatch::default(), &[("ns/svc", 1)]);
    r.fault = Some(pb::FaultInjection {
        delay: Some(pb::fault_injection::Delay {
            fixed_delay: Some(prost_types::Duration {
                seconds: 1,
                nanos: 0,
            }),
            percent: -1.0,
        }),
        abort: None,
    });
    let e = RouteTable::from_proto(pb::ServiceRoutes {
        name: "ns/svc".into(),
        routes: vec![r],
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!(e.field, "routes[0] (ns/vs).fault.delay.percent");
}
