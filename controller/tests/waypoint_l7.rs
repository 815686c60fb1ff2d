//! The waypoint resources from manifests: which services a route lands on (Service parents,
//! waypoint parents filtered by hostnames), what is kept for a 500, and which waypoint gets
//! what (`l7_local_config`, the lab's file mode).

use amesh_proto::amesh::l7::v1::{authorization, filter, path_match};
use controller::manifests::load_yaml;
use controller::translate::{l7_local_config, translate, TranslateOptions, Translated};

const BASE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/use-waypoint: wp}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: wp, namespace: shop}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: other, namespace: shop}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 10.96.0.1, selector: {app: web}, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop}
spec: {clusterIP: 10.96.0.2, selector: {app: api}, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: lonely, namespace: shop, labels: {istio.io/use-waypoint: none}}
spec: {clusterIP: 10.96.0.3, selector: {app: lonely}, ports: [{name: http, port: 80}]}
"#;

fn run(extra: &str) -> Translated {
    let loaded = load_yaml("test.yaml", &format!("{BASE}---\n{extra}"));
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    translate(&loaded.manifests, &TranslateOptions::default())
}

fn warned(t: &Translated, needle: &str) -> bool {
    t.warnings.iter().any(|w| w.contains(needle))
}

#[test]
fn waypoint_parents_reach_its_services_filtered_by_hostname() {
    let t = run(r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: via-waypoint, namespace: shop}
spec:
  parentRefs: [{name: wp}]
  hostnames: [api.shop.svc.cluster.local]
  rules: [{backendRefs: [{name: api, port: 80}]}]
"#);
    let names: Vec<&str> = t.service_routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["shop/api.shop.svc.cluster.local"]);
    let local = l7_local_config(&t, "shop", "wp");
    assert_eq!(local.routes.len(), 1);
    // Another waypoint gets nothing.
    assert!(l7_local_config(&t, "shop", "other").routes.is_empty());
}

#[test]
fn invalid_backends_are_kept_for_a_500_and_reported() {
    let t = run(r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web}]
  rules:
    - matches: [{path: {type: Exact, value: /x}, method: get}]
      filters:
        - type: RequestMirror
          requestMirror: {backendRef: {name: api, port: 80}, fraction: {numerator: 1, denominator: 4}}
      backendRefs:
        - {name: ghost, port: 80}
        - {name: api}
        - {group: example.com, kind: Bucket, name: b}
"#);
    let routes = &t.service_routes[0].resource.routes;
    assert_eq!(routes.len(), 1);
    let r = &routes[0];
    let m = r.r#match.as_ref().unwrap();
    assert_eq!(m.method, "GET");
    assert_eq!(m.path.as_ref().unwrap().kind(), path_match::Kind::Exact);
    let services: Vec<&str> = r.backends.iter().map(|b| b.service.as_str()).collect();
    assert_eq!(
        services,
        [
            "shop/ghost.shop.svc.cluster.local",
            "shop/api.shop.svc.cluster.local",
            ""
        ]
    );
    assert!(warned(&t, "there is no Service shop/ghost"));
    assert!(warned(&t, "backendRefs[1]: a Service backend needs a port"));
    assert!(warned(&t, "is not a Service; requests to it get 500"));
    let Some(filter::Kind::RequestMirror(mirror)) = &r.filters[0].kind else {
        panic!("a mirror: {:?}", r.filters);
    };
    assert_eq!(mirror.percent, 25.0);
}

#[test]
fn unsupported_parents_and_unenforced_routes_are_reported() {
    let t = run(r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: consumer, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: db, namespace: data}]
  rules: [{backendRefs: [{name: web, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: unbound, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: lonely}]
  rules: [{backendRefs: [{name: lonely, port: 80}]}]
"#);
    assert!(warned(&t, "consumer route"));
    assert!(warned(
        &t,
        "service shop/lonely has routes (shop/unbound) but uses no waypoint"
    ));
    // Kept (visible in renders) but sent to no waypoint.
    let lonely = &t.service_routes[0];
    assert_eq!(lonely.name, "shop/lonely.shop.svc.cluster.local");
    assert!(lonely.waypoints.is_empty());
}

#[test]
fn l7_policies_go_to_the_waypoints_they_target() {
    let t = run(r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: on-web, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  action: AUDIT
  rules:
    - from: [{source: {serviceAccounts: [shop/client], notServiceAccounts: [shop/bad], notPrincipals: [x/ns/y/sa/z]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: both, namespace: shop}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: other}]
  rules:
    - from: [{source: {principals: [a/ns/b/sa/c], serviceAccounts: [shop/client]}}]
    - to: [{operation: {methods: [GET]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: nowhere, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: lonely}]
  rules: [{to: [{operation: {methods: [GET]}}]}]
"#);
    let wp = l7_local_config(&t, "shop", "wp");
    assert_eq!(wp.policies.len(), 1);
    let audit = &wp.policies[0];
    assert_eq!(audit.action(), authorization::Action::Audit);
    let source = &audit.rules[0].from[0];
    assert_eq!(source.principals, ["cluster.local/ns/shop/sa/client"]);
    assert_eq!(
        source.not_principals,
        ["x/ns/y/sa/z", "cluster.local/ns/shop/sa/bad"]
    );

    // An ALLOW source needing principals and serviceAccounts together: that rule is dropped
    // (allows less), the other rule stays.
    let other = l7_local_config(&t, "shop", "other");
    assert_eq!(other.policies.len(), 1);
    assert_eq!(other.policies[0].rules.len(), 1);
    assert!(!other.policies[0].rules[0].to.is_empty());
    assert!(warned(&t, "the rule is dropped"));

    // No waypoint enforces `nowhere`: reported, given to nobody.
    assert!(warned(&t, "Service shop/lonely uses no waypoint"));
    let nowhere = t
        .l7_authorizations
        .iter()
        .find(|p| p.name == "shop/nowhere")
        .unwrap();
    assert!(nowhere.waypoints.is_empty());
    // ztunnel does not get any of them.
    assert!(t
        .authorizations
        .iter()
        .all(|(n, _)| !n.starts_with("shop/")));
}
