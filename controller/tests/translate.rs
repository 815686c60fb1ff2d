//! Translation behaviours that golden files show less directly: failing closed on policies
//! that skipped validation, conflict resolution between PeerAuthentications, and
//! EndpointSlice endpoints that meet twice (a dual-stack pod, a repeated address).

use amesh_proto::istio::security::{Action, Authorization};
use amesh_proto::istio::workload::address::Type;
use controller::manifests::{load_yaml, ObjectKey};
use controller::{translate, TranslateOptions, Translated};

fn policy<'a>(out: &'a Translated, name: &str) -> &'a Authorization {
    &out.authorizations
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no policy {name} in {:?}", out.authorizations))
        .1
}

fn workload_policies(out: &Translated, uid: &str) -> Vec<String> {
    out.addresses
        .iter()
        .find_map(|(n, a)| match &a.r#type {
            Some(Type::Workload(w)) if n == uid => Some(w.authorization_policies.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no workload {uid}"))
}

/// Another source (the Kubernetes API without Istio's webhook) may hand over a policy the
/// folder loader would have rejected: it must fail closed, never open.
#[test]
fn unvalidated_policy_fails_closed() {
    let text = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow, namespace: shop}
spec:
  rules: [{to: [{operation: {ports: [\"8080\"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny, namespace: shop}
spec:
  action: DENY
  rules: [{to: [{operation: {ports: [\"8080\"]}}]}]
";
    let mut loaded = load_yaml("p.yaml", text);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    for name in ["allow", "deny"] {
        let p = loaded
            .manifests
            .authorization_policies
            .get_mut(&ObjectKey::new("shop", name))
            .expect("loaded");
        let op = p.spec.rules[0].to[0].operation.as_mut().expect("operation");
        op.ports = vec!["eighty".into()];
    }
    let out = translate(&loaded.manifests, &TranslateOptions::default());

    let allow = policy(&out, "shop/allow");
    assert_eq!(allow.action, Action::Allow as i32);
    assert!(
        allow.rules.is_empty(),
        "an ALLOW with no rule allows nothing"
    );

    let deny = policy(&out, "shop/deny");
    assert_eq!(deny.action, Action::Deny as i32);
    assert_eq!(deny.rules.len(), 1);
    assert!(
        deny.rules[0].clauses.is_empty(),
        "a rule without clauses matches everything"
    );
    assert_eq!(out.warnings.len(), 2, "{:#?}", out.warnings);
}

/// Two namespace-level PeerAuthentications: the oldest wins (here the PERMISSIVE one), and the
/// conflict is reported.
#[test]
fn oldest_peer_authentication_wins() {
    let text = "\
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: a-strict, namespace: shop, creationTimestamp: \"2024-05-02T00:00:00Z\"}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: z-permissive, namespace: shop, creationTimestamp: \"2024-05-01T00:00:00Z\"}
spec: {mtls: {mode: PERMISSIVE}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop}
spec: {nodeName: n, containers: [{name: c, image: i}]}
status: {podIP: 10.0.0.1}
";
    let loaded = load_yaml("pa.yaml", text);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let out = translate(&loaded.manifests, &TranslateOptions::default());
    assert!(workload_policies(&out, "Kubernetes//v1/Pod/shop/web").is_empty());
    assert!(
        out.warnings
            .iter()
            .any(|w| w.contains("shop/z-permissive, shop/a-strict") && w.contains("wins")),
        "{:#?}",
        out.warnings
    );
}

/// Nothing in, only the (unreferenced) static STRICT policy out.
#[test]
fn empty_manifests() {
    let out = translate(&Default::default(), &TranslateOptions::default());
    assert!(out.addresses.is_empty());
    let names: Vec<&str> = out.authorizations.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["istio-system/istio_converted_static_strict"]);
    assert!(out.warnings.is_empty());
}

fn workload_services(out: &Translated, uid: &str) -> Vec<(String, Vec<(u32, u32)>)> {
    let w = out
        .addresses
        .iter()
        .find_map(|(n, a)| match &a.r#type {
            Some(Type::Workload(w)) if n == uid => Some(w),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no workload {uid} in {:#?}", out.addresses));
    let mut services: Vec<_> = w
        .services
        .iter()
        .map(|(k, l)| {
            let ports = l.ports.iter().map(|p| (p.service_port, p.target_port));
            (k.clone(), ports.collect())
        })
        .collect();
    services.sort();
    services
}

/// A dual-stack pod listed by both slices of a selector-less Service (one per family) keeps
/// one workload with the Service once; an address listed twice in one slice is one workload
/// and a warning, never two resources under one name.
#[test]
fn slice_endpoints_that_meet_twice() {
    let text = "\
apiVersion: v1
kind: Pod
metadata: {name: db-0, namespace: shop}
spec: {nodeName: node-1, containers: [{name: db, image: db}]}
status: {podIPs: [{ip: 10.0.0.5}, {ip: \"fd00::5\"}]}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec:
  clusterIP: 10.96.0.5
  ports: [{name: sql, port: 5432}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-v4, namespace: shop, labels: {kubernetes.io/service-name: db}}
addressType: IPv4
endpoints: [{addresses: [10.0.0.5]}, {addresses: [10.0.0.9]}, {addresses: [10.0.0.9]}]
ports: [{name: sql, port: 15432}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-v6, namespace: shop, labels: {kubernetes.io/service-name: db}}
addressType: IPv6
endpoints: [{addresses: [\"fd00::5\"]}]
ports: [{name: sql, port: 15432}]
";
    let loaded = load_yaml("db.yaml", text);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let out = translate(&loaded.manifests, &TranslateOptions::default());
    let db = "shop/db.shop.svc.cluster.local".to_owned();
    assert_eq!(
        workload_services(&out, "Kubernetes//v1/Pod/shop/db-0"),
        [(db.clone(), vec![(5432, 15432)])]
    );
    let uid = "Kubernetes/discovery.k8s.io/EndpointSlice/shop/db-v4/10.0.0.9";
    assert_eq!(workload_services(&out, uid), [(db, vec![(5432, 15432)])]);
    let names: Vec<&str> = out.addresses.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "Kubernetes//v1/Pod/shop/db-0",
            uid,
            "shop/db.shop.svc.cluster.local"
        ]
    );
    assert_eq!(
        out.warnings,
        ["EndpointSlice shop/db-v4: address 10.0.0.9 listed twice; the second endpoint is ignored"]
    );
}
