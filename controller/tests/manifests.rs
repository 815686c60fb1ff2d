//! The folder source: what loads, and how a bad object is reported without blocking the rest.

use std::fs;
use std::path::Path;

use controller::manifests::{load_dir, load_yaml, ManifestError, ObjectKey};

fn write(dir: &Path, rel: &str, text: &str) {
    let path = dir.join(rel);
    fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    fs::write(path, text).expect("write");
}

const SERVICE_OK: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: good
  namespace: shop
spec:
  ports:
    - port: 80
";

#[test]
fn bad_yaml_costs_only_its_document() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!(
        "{SERVICE_OK}---
apiVersion: v1
kind: Pod
metadata:
  name: broken
  labels: {{app: web
spec: {{}}
---
apiVersion: v1
kind: Pod
metadata:
  name: after
  namespace: shop
"
    );
    write(dir.path(), "mixed.yaml", &text);
    let loaded = load_dir(dir.path());

    assert_eq!(loaded.errors.len(), 1, "{:#?}", loaded.errors);
    let msg = loaded.errors[0].to_string();
    eprintln!("{msg}");
    assert!(msg.contains("mixed.yaml"), "{msg}");
    assert!(msg.contains("document 2"), "{msg}");
    assert!(msg.contains("not valid YAML"), "{msg}");
    // Positions are in the file, not in the document (which starts at line 9).
    assert!(msg.contains("line 15"), "{msg}");
    assert!(loaded
        .manifests
        .services
        .contains_key(&ObjectKey::new("shop", "good")));
    assert!(loaded
        .manifests
        .pods
        .contains_key(&ObjectKey::new("shop", "after")));
}

#[test]
fn wrong_field_type_names_file_object_and_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        "svc.yaml",
        &format!(
            "{SERVICE_OK}---
apiVersion: v1
kind: Service
metadata:
  name: bad
  namespace: shop
spec:
  ports: \"eighty\"
---
apiVersion: v1
kind: Service
metadata:
  name: bad-port
spec:
  ports:
    - name: http
      port: eighty
"
        ),
    );
    write(
        dir.path(),
        "pod.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n",
    );
    let loaded = load_dir(dir.path());

    assert_eq!(loaded.errors.len(), 2, "{:#?}", loaded.errors);
    let first = &loaded.errors[0];
    let msg = first.to_string();
    eprintln!("{msg}\n{}", loaded.errors[1]);
    assert!(msg.contains("svc.yaml"), "{msg}");
    assert!(msg.contains("Service shop/bad "), "{msg}");
    assert_eq!(first.field(), Some("spec.ports"), "{msg}");
    assert!(msg.contains("line 16"), "position in the file: {msg}");

    let port_err = &loaded.errors[1];
    // Namespace defaulted in the error too.
    assert!(
        port_err.to_string().contains("Service default/bad-port"),
        "{port_err}"
    );
    assert_eq!(port_err.field(), Some("spec.ports[0].port"), "{port_err}");

    assert!(loaded
        .manifests
        .services
        .contains_key(&ObjectKey::new("shop", "good")));
    assert!(loaded
        .manifests
        .pods
        .contains_key(&ObjectKey::new("default", "p")));
}

#[test]
fn invalid_policy_values_are_rejected_with_their_field() {
    let text = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad-port, namespace: shop}
spec:
  rules:
    - to:
        - operation:
            ports: [\"8080\", \"eighty\"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: typo, namespace: shop}
spec:
  rules:
    - from:
        - source:
            principal: [\"cluster.local/ns/shop/sa/web\"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad-ip, namespace: shop}
spec:
  rules:
    - when:
        - key: source.ip
          values: [\"10.0.0.0/33\"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: empty-source, namespace: shop}
spec:
  rules:
    - from:
        - source: {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad-key, namespace: shop}
spec:
  rules:
    - when:
        - key: source.principals
          values: [\"x\"]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: ports-without-selector, namespace: shop}
spec:
  portLevelMtls:
    8080: {mode: DISABLE}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: bad-mode, namespace: shop}
spec:
  mtls: {mode: STRCT}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: fine, namespace: shop}
spec:
  rules:
";
    let loaded = load_yaml("policies.yaml", text);
    let fields: Vec<(String, Option<String>)> = loaded
        .errors
        .iter()
        .map(|e| match e {
            ManifestError::Invalid { object, field, .. } => {
                (object.name.clone().unwrap_or_default(), field.clone())
            }
            other => panic!("unexpected {other}"),
        })
        .collect();
    let f = |s: &str| Some(s.to_owned());
    assert_eq!(
        fields,
        vec![
            (
                "bad-port".into(),
                f("spec.rules[0].to[0].operation.ports[1]")
            ),
            ("typo".into(), f("spec.rules[0].from[0].source")),
            ("bad-ip".into(), f("spec.rules[0].when[0].values[0]")),
            ("empty-source".into(), f("spec.rules[0].from[0].source")),
            ("bad-key".into(), f("spec.rules[0].when[0].key")),
            ("ports-without-selector".into(), f("spec.portLevelMtls")),
            ("bad-mode".into(), f("spec.mtls.mode")),
        ]
    );
    for e in &loaded.errors {
        eprintln!("{e}");
        assert!(
            e.to_string()
                .starts_with("policies.yaml: AuthorizationPolicy shop/")
                || e.to_string()
                    .starts_with("policies.yaml: PeerAuthentication shop/"),
            "{e}"
        );
    }
    assert_eq!(
        loaded
            .manifests
            .authorization_policies
            .keys()
            .collect::<Vec<_>>(),
        vec![&ObjectKey::new("shop", "fine")]
    );
}

#[test]
fn kinds_names_and_namespaces() {
    let text = "\
# leading comment, then an empty document
---
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: ignored}
---
apiVersion: v1
metadata: {name: no-kind}
---
apiVersion: v1
kind: Pod
metadata: {namespace: shop}
---
- just
- a list
---
apiVersion: v1
kind: Namespace
metadata: {name: shop, namespace: ignored-for-cluster-scoped}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r}
spec:
  parentRefs: [{kind: Service, group: \"\", name: web, port: 80}]
  rules:
    - matches: [{path: {type: PathPrefix, value: /api}}]
      backendRefs: [{name: web-v2, port: 80, weight: 90}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: shop}
spec:
  jwtRules: [{issuer: https://issuer.example, jwksUri: https://issuer.example/jwks}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, image: echo}]}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: web, namespace: shop}
";
    let loaded = load_yaml("mixed.yaml", text);
    let errs: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
    eprintln!("{}", errs.join("\n"));
    assert_eq!(errs.len(), 3, "{errs:#?}");
    assert!(
        errs[0].contains("document 2") && errs[0].contains("kind: missing"),
        "{}",
        errs[0]
    );
    assert!(
        errs[1].contains("Pod without a name") && errs[1].contains("metadata.name"),
        "{}",
        errs[1]
    );
    assert!(errs[2].contains("must be a mapping"), "{}", errs[2]);

    let m = &loaded.manifests;
    assert!(m.namespaces.contains_key("shop"));
    assert_eq!(m.namespaces["shop"].metadata.namespace, None);
    assert!(m.http_routes.contains_key(&ObjectKey::new("default", "r")));
    assert_eq!(
        m.http_routes[&ObjectKey::new("default", "r")].spec.rules[0].backend_refs[0].weight,
        Some(90)
    );
    assert!(m
        .request_authentications
        .contains_key(&ObjectKey::new("shop", "jwt")));
    assert!(m.deployments.contains_key(&ObjectKey::new("shop", "web")));
    assert!(m
        .service_accounts
        .contains_key(&ObjectKey::new("shop", "web")));
    assert_eq!(m.len(), 5);
}

#[test]
fn folder_walk_order_duplicates_and_skips() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pod = |ip: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: p, namespace: shop}}\nstatus: {{podIP: {ip}}}\n"
        )
    };
    write(dir.path(), "b/second.yml", &pod("10.0.0.2"));
    write(dir.path(), "a.yaml", &pod("10.0.0.1"));
    write(dir.path(), "..data/hidden.yaml", &pod("10.0.0.3"));
    write(dir.path(), ".editor.yaml", "not: [valid");
    write(dir.path(), "notes.txt", "not: [valid");
    write(
        dir.path(),
        "c.YAML",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n",
    );

    let loaded = load_dir(dir.path());
    assert_eq!(loaded.errors.len(), 1, "{:#?}", loaded.errors);
    match &loaded.errors[0] {
        ManifestError::Duplicate { file, first, .. } => {
            assert!(file.ends_with("b/second.yml"), "{}", file.display());
            assert!(first.ends_with("a.yaml"), "{}", first.display());
        }
        other => panic!("expected a duplicate, got {other}"),
    }
    let p = &loaded.manifests.pods[&ObjectKey::new("shop", "p")];
    let ip = p.status.as_ref().and_then(|s| s.pod_ip.as_deref());
    assert_eq!(ip, Some("10.0.0.1"), "the first file in sorted order wins");
    assert!(loaded.manifests.namespaces.contains_key("shop"));
}

#[test]
fn missing_folder_is_an_error_not_a_panic() {
    let loaded = load_dir("/nonexistent/amesh/manifests");
    assert!(loaded.manifests.is_empty());
    assert!(matches!(
        loaded.errors.as_slice(),
        [ManifestError::Read { .. }]
    ));
}

/// EndpointSlices load (namespace defaulted) and are held to what the API server would check
/// at apply time: a known addressType, an address per endpoint, addresses of the slice's
/// family. The error names the field.
#[test]
fn endpoint_slices_are_checked_as_the_api_server_would() {
    let text = "\
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: fine, labels: {kubernetes.io/service-name: db}}
addressType: IPv6
endpoints: [{addresses: [\"fd00::1\"]}]
ports: [{name: sql, port: 5432}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: no-type, namespace: shop}
endpoints: [{addresses: [10.0.0.1]}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: wrong-family, namespace: shop}
addressType: IPv4
endpoints: [{addresses: [10.0.0.1]}, {addresses: [10.0.0.2, \"fd00::2\"]}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: no-address, namespace: shop}
addressType: IPv4
endpoints: [{addresses: []}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: bad-port, namespace: shop}
addressType: IPv4
ports: [{name: http, port: http}]
";
    let loaded = load_yaml("slices.yaml", text);
    let fields: Vec<(String, Option<String>)> = loaded
        .errors
        .iter()
        .map(|e| match e {
            ManifestError::Invalid { object, field, .. } => {
                (object.name.clone().unwrap_or_default(), field.clone())
            }
            other => panic!("unexpected {other}"),
        })
        .collect();
    let f = |s: &str| Some(s.to_owned());
    assert_eq!(
        fields,
        vec![
            ("no-type".into(), f("addressType")),
            ("wrong-family".into(), f("endpoints[1].addresses[1]")),
            ("no-address".into(), f("endpoints[0].addresses")),
            ("bad-port".into(), f("ports[0].port")),
        ]
    );
    for e in &loaded.errors {
        assert!(
            e.to_string()
                .starts_with("slices.yaml: EndpointSlice shop/"),
            "{e}"
        );
    }
    let keys: Vec<_> = loaded.manifests.endpoint_slices.keys().collect();
    assert_eq!(keys, vec![&ObjectKey::new("default", "fine")]);
}
