//! Translation behaviours that golden files show less directly: failing closed on policies
//! that skipped validation, and conflict resolution between PeerAuthentications.

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
