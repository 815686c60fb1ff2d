use std::collections::HashMap;

use amesh_proto::google::rpc::Status;
use amesh_proto::istio::security::Authorization;
use amesh_proto::AUTHORIZATION_TYPE_URL as AUTHZ;

use super::*;

fn set(policies: &[(&str, bool)]) -> ResourceSet {
    let mut set = ResourceSet::new();
    for (name, dry_run) in policies {
        let p = Authorization {
            name: (*name).into(),
            dry_run: *dry_run,
            ..Default::default()
        };
        set.insert(AUTHZ, name, &p);
    }
    set
}

fn subscribe(initial: HashMap<String, String>) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: AUTHZ.into(),
        resource_names_subscribe: vec![WILDCARD.into()],
        initial_resource_versions: initial,
        ..Default::default()
    }
}

fn answer(nonce: &str, error: Option<&str>) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: AUTHZ.into(),
        response_nonce: nonce.into(),
        error_detail: error.map(|m| Status {
            code: 3,
            message: m.into(),
            details: vec![],
        }),
        ..Default::default()
    }
}

fn names(r: &DeltaDiscoveryResponse) -> Vec<&str> {
    r.resources.iter().map(|r| r.name.as_str()).collect()
}

#[test]
fn first_request_is_answered_even_empty_and_nonces_are_fresh() {
    let mut s = Session::new("n");
    let out = s.on_request(subscribe(HashMap::new()), &ResourceSet::new());
    assert_eq!(out.len(), 1);
    assert!(out[0].resources.is_empty() && out[0].removed_resources.is_empty());
    let out2 = s.on_update(&set(&[("a", false)]));
    assert_eq!(names(&out2[0]), ["a"]);
    assert_ne!(out[0].nonce, out2[0].nonce);
    // ACK: nothing to send; same snapshot again: nothing either.
    assert!(s
        .on_request(answer(&out2[0].nonce, None), &set(&[("a", false)]))
        .is_empty());
    assert!(s.on_update(&set(&[("a", false)])).is_empty());
}

#[test]
fn initial_versions_send_only_the_difference() {
    let current = set(&[("a", false), ("b", false)]);
    let initial = HashMap::from([
        (
            "a".to_string(),
            current.version(AUTHZ, "a").unwrap().to_string(),
        ),
        ("b".to_string(), "stale".to_string()),
        ("gone".to_string(), "x".to_string()),
    ]);
    let mut s = Session::new("n");
    let out = s.on_request(subscribe(initial), &current);
    assert_eq!(out.len(), 1);
    assert_eq!(names(&out[0]), ["b"]);
    assert_eq!(out[0].removed_resources, ["gone"]);
}

#[test]
fn nack_isolates_the_bad_resource_and_never_resends_it_unchanged() {
    let v1 = set(&[("a", false), ("bad", false), ("c", false)]);
    let mut s = Session::new("n");
    let first = s.on_request(subscribe(HashMap::new()), &v1).remove(0);
    assert_eq!(names(&first), ["a", "bad", "c"]);
    // NACK of three: split into halves.
    let halves = s.on_request(answer(&first.nonce, Some("bad is bad")), &v1);
    assert_eq!(
        halves.iter().map(names).collect::<Vec<_>>(),
        [vec!["a"], vec!["bad", "c"]]
    );
    assert!(s.on_request(answer(&halves[0].nonce, None), &v1).is_empty());
    let quarters = s.on_request(answer(&halves[1].nonce, Some("bad is bad")), &v1);
    assert_eq!(
        quarters.iter().map(names).collect::<Vec<_>>(),
        [vec!["bad"], vec!["c"]]
    );
    assert!(s
        .on_request(answer(&quarters[0].nonce, Some("bad")), &v1)
        .is_empty());
    assert!(s
        .on_request(answer(&quarters[1].nonce, None), &v1)
        .is_empty());
    // Other changes flow; the rejected version stays out.
    let v2 = set(&[("a", true), ("bad", false), ("c", false)]);
    let out = s.on_update(&v2);
    assert_eq!(names(&out[0]), ["a"]);
    // Once it changes it is sent again.
    let v3 = set(&[("a", true), ("bad", true), ("c", false)]);
    let out = s.on_update(&v3);
    assert_eq!(names(&out[0]), ["bad"]);
}

#[test]
fn removal_and_unsubscribe() {
    let mut s = Session::new("n");
    let v1 = set(&[("a", false), ("b", false)]);
    s.on_request(subscribe(HashMap::new()), &v1);
    let out = s.on_update(&set(&[("a", false)]));
    assert_eq!(out[0].removed_resources, ["b"]);
    assert!(out[0].resources.is_empty());
    // Named subscription only: switching off the wildcard removes what is not named.
    let req = DeltaDiscoveryRequest {
        type_url: AUTHZ.into(),
        resource_names_unsubscribe: vec![WILDCARD.into()],
        resource_names_subscribe: vec!["a".into()],
        ..Default::default()
    };
    assert!(s
        .on_request(req, &set(&[("a", false), ("z", false)]))
        .is_empty());
    assert!(s.on_update(&set(&[("a", false), ("z", false)])).is_empty());
}

#[test]
fn waypoint_scoped_types_reach_their_waypoint_only_and_follow_rebinding() {
    use amesh_proto::amesh::l7::v1::ServiceRoutes;
    use amesh_proto::SERVICE_ROUTES_TYPE_URL as ROUTES;

    let scoped = |gateways: &[&str]| {
        let mut set = ResourceSet::new();
        let routes = ServiceRoutes {
            name: "ns/svc.ns.svc.cluster.local".into(),
            ..Default::default()
        };
        set.insert_for_waypoints(
            ROUTES,
            "ns/svc.ns.svc.cluster.local",
            &routes,
            gateways.iter().map(|g| (*g).to_owned()).collect(),
        );
        set
    };
    let wildcard = DeltaDiscoveryRequest {
        type_url: ROUTES.into(),
        ..Default::default()
    };
    let waypoint = Client::Waypoint {
        gateway: Some("ns/wp".into()),
    };

    let mut zt = Session::new("ztunnel~10.0.0.1~z.istio-system~istio-system.svc.cluster.local");
    let out = zt.on_request(wildcard.clone(), &scoped(&["ns/wp"]));
    assert_eq!(out.len(), 1, "the first request is answered, empty");
    assert!(out[0].resources.is_empty());

    let mut wp = Session::for_client("waypoint~10.0.0.9~wp.ns~ns.svc.cluster.local", waypoint);
    let out = wp.on_request(wildcard, &scoped(&["ns/wp"]));
    assert_eq!(names(&out[0]), ["ns/svc.ns.svc.cluster.local"]);

    // The service moves to another waypoint: same bytes, but this waypoint must drop it.
    let out = wp.on_update(&scoped(&["ns/other"]));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].removed_resources, ["ns/svc.ns.svc.cluster.local"]);
    assert!(zt.on_update(&scoped(&["ns/other"])).is_empty());
}
