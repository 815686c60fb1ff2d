//! Istio traffic management for waypoints: VirtualService and DestinationRule translated with
//! the rest of the config — who gets a service's routes and destination policy (also in the
//! lab's file mode), subsets following pods, and how a VirtualService looks next to HTTPRoutes.

use amesh_proto::amesh::l7::v1::{filter, load_balancer};
use controller::manifests::load_yaml;
use controller::translate::{l7_local_config, translate, TranslateOptions, Translated};

const BASE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: front, namespace: shop}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: back, namespace: shop}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop, labels: {istio.io/use-waypoint: front}}
spec: {clusterIP: 10.96.0.1, selector: {app: web}, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop, labels: {istio.io/use-waypoint: back}}
spec: {clusterIP: 10.96.0.2, selector: {app: api}, ports: [{name: http, port: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: audit, namespace: shop}
spec: {clusterIP: 10.96.0.3, selector: {app: audit}, ports: [{name: http, port: 80}]}
"#;

fn pod(name: &str, app: &str, version: &str, ip: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: shop, labels: {{app: {app}, version: {version}}}}}
spec: {{nodeName: n1, containers: [{{name: c, image: i}}]}}
status: {{phase: Running, podIP: {ip}, conditions: [{{type: Ready, status: "True"}}]}}
"#
    )
}

fn run(extra: &str) -> Translated {
    let loaded = load_yaml("test.yaml", &format!("{BASE}---\n{extra}"));
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    translate(&loaded.manifests, &TranslateOptions::default())
}

fn names(config: &amesh_proto::amesh::l7::v1::LocalL7Config) -> Vec<&str> {
    config.routes.iter().map(|r| r.name.as_str()).collect()
}

const WEB_TO_API: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: shop}
spec:
  hosts: [web]
  http:
    - mirror: {host: audit.shop.svc.cluster.local}
      route:
        - {destination: {host: api, subset: v1}, weight: 90}
        - {destination: {host: api, subset: v2}, weight: 10}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api, namespace: shop}
spec:
  host: api.shop.svc
  trafficPolicy: {loadBalancer: {simple: RANDOM}}
  subsets:
    - {name: v1, labels: {version: v1}}
    - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: audit, namespace: shop}
spec:
  host: audit
  trafficPolicy: {connectionPool: {tcp: {maxConnections: 1}}}
"#;

#[test]
fn a_backends_destination_policy_goes_where_it_is_chosen() {
    let t = run(WEB_TO_API);
    // web's routes name api (backend) and audit (mirror): the front waypoint chooses
    // among their endpoints, so it gets their destination policies; the back waypoint
    // serves api and gets its resource as api's own waypoint. audit has no waypoint.
    let front = l7_local_config(&t, "shop", "front");
    assert_eq!(
        names(&front),
        [
            "shop/api.shop.svc.cluster.local",
            "shop/audit.shop.svc.cluster.local",
            "shop/web.shop.svc.cluster.local"
        ]
    );
    let back = l7_local_config(&t, "shop", "back");
    assert_eq!(names(&back), ["shop/api.shop.svc.cluster.local"]);
    let api = &back.routes[0];
    assert!(api.routes.is_empty(), "a DestinationRule adds no routes");
    let policy = api.destination.as_ref().expect("destination");
    assert_eq!(policy.source, "shop/api");
    let lb = policy
        .traffic_policy
        .as_ref()
        .unwrap()
        .load_balancer
        .as_ref();
    assert_eq!(lb.unwrap().simple(), load_balancer::Simple::Random);

    let web = &front.routes[2];
    let route = &web.routes[0];
    assert_eq!(route.route_kind, "VirtualService");
    let weights: Vec<(u32, &str, u32)> = route
        .backends
        .iter()
        .map(|b| (b.port, b.subset.as_str(), b.weight))
        .collect();
    assert_eq!(weights, [(8080, "v1", 90), (8080, "v2", 10)]);
    let Some(filter::Kind::RequestMirror(m)) = &route.filters[0].kind else {
        panic!("a mirror: {:?}", route.filters);
    };
    assert_eq!(m.backend.as_ref().unwrap().port, 80);
    assert_eq!(m.percent, 100.0);
    // Istio's default retry policy.
    let retry = route.retry.as_ref().expect("default retries");
    assert_eq!(
        (retry.attempts, retry.retriable_status_codes.as_slice()),
        (2, &[503][..])
    );
}

#[test]
fn subsets_follow_the_pods_labels() {
    let pods = [
        pod("api-a", "api", "v1", "10.244.0.10"),
        pod("api-b", "api", "v2", "10.244.0.11"),
        pod("web-a", "web", "v1", "10.244.0.12"),
    ]
    .join("---\n");
    let t = run(&format!("{WEB_TO_API}---\n{pods}"));
    let api = t
        .service_routes
        .iter()
        .find(|r| r.name == "shop/api.shop.svc.cluster.local")
        .unwrap();
    let subsets: Vec<(&str, Vec<&str>)> = api
        .resource
        .destination
        .as_ref()
        .unwrap()
        .subsets
        .iter()
        .map(|s| {
            (
                s.name.as_str(),
                s.workload_uids.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    // web-a carries version v1 but is not an endpoint of api.
    assert_eq!(
        subsets,
        [
            ("v1", vec!["Kubernetes//v1/Pod/shop/api-a"]),
            ("v2", vec!["Kubernetes//v1/Pod/shop/api-b"])
        ]
    );

    // The pod moves to v2: the next translation moves it.
    let moved = pods.replace("{app: api, version: v1}", "{app: api, version: v2}");
    let t = run(&format!("{WEB_TO_API}---\n{moved}"));
    let api = t
        .service_routes
        .iter()
        .find(|r| r.name == "shop/api.shop.svc.cluster.local")
        .unwrap();
    let v2 = &api.resource.destination.as_ref().unwrap().subsets[1];
    assert_eq!(
        v2.workload_uids,
        [
            "Kubernetes//v1/Pod/shop/api-a",
            "Kubernetes//v1/Pod/shop/api-b"
        ]
    );
}

#[test]
fn an_httproute_on_the_service_wins_over_a_virtual_service() {
    let t = run(&format!(
        "{WEB_TO_API}---\n{}",
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web}]
  rules: [{backendRefs: [{name: web, port: 80}]}]
"#
    ));
    let web = t
        .service_routes
        .iter()
        .find(|r| r.name == "shop/web.shop.svc.cluster.local")
        .unwrap();
    let kinds: Vec<&str> = web
        .resource
        .routes
        .iter()
        .map(|r| r.route_kind.as_str())
        .collect();
    assert_eq!(kinds, ["HTTPRoute"]);
    assert!(
        t.warnings
            .iter()
            .any(|w| w.contains("VirtualService shop/web not applied")
                && w.contains("HTTPRoute shop/web")),
        "{:?}",
        t.warnings
    );
    // The HTTPRoute no longer sends to api: the front waypoint does not get api's policy.
    let front = l7_local_config(&t, "shop", "front");
    assert_eq!(names(&front), ["shop/web.shop.svc.cluster.local"]);
}

#[test]
fn an_ingress_only_virtual_service_is_left_out() {
    let t = run(r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: shop}
spec:
  hosts: [web]
  gateways: [istio-system/ingress]
  http: [{route: [{destination: {host: web}}]}]
"#);
    assert!(t.service_routes.is_empty(), "{:?}", t.service_routes);
    assert!(t
        .warnings
        .iter()
        .any(|w| w.contains("spec.gateways: istio-system/ingress")));
}
