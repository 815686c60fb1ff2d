//! VirtualService and DestinationRule status through kube-rs against the fake API server:
//! what amesh ignored is written on the object's `/status` as an `Accepted` condition (reason
//! `UnsupportedValue`, one warning per line), a clean object gets reason `Accepted`, and an
//! unchanged status is not written again.

#[path = "kube_source/fake_api.rs"]
mod fake_api;

use controller::istio_status::{problems, write};
use controller::manifests::{load_yaml, ObjectKey};
use controller::source::kube::Kind;
use controller::translate::{translate, TranslateOptions};
use fake_api::APPLY;
use serde_json::{json, Value};

const VS_STATUS: &str = "/apis/networking.istio.io/v1/namespaces/shop/virtualservices/web/status";

fn served(kind: &str, name: &str) -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": "shop", "generation": 3},
        "spec": {},
    })
}

/// The warnings a VirtualService with a CORS policy and a DestinationRule with client TLS get.
fn translated_problems() -> std::collections::BTreeMap<(Kind, ObjectKey), Vec<String>> {
    let loaded = load_yaml(
        "test.yaml",
        r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 10.96.0.1, selector: {app: web}, ports: [{name: http, port: 80}]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: shop}
spec:
  hosts: [web]
  http:
    - corsPolicy: {allowOrigins: [{exact: "https://a.example"}]}
      route: [{destination: {host: web}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: shop}
spec:
  host: web
  trafficPolicy: {tls: {mode: SIMPLE}}
"#,
    );
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    problems(&translate(&loaded.manifests, &TranslateOptions::default()).warnings)
}

#[tokio::test]
async fn unsupported_fields_are_written_on_the_status_once() {
    let api = fake_api::serve().await;
    api.objects.insert(
        "virtualservices",
        "shop",
        "web",
        served("VirtualService", "web"),
    );
    api.objects.insert(
        "destinationrules",
        "shop",
        "web",
        served("DestinationRule", "web"),
    );
    let client = api.client();
    let problems = translated_problems();
    let key = ObjectKey::new("shop", "web");
    let vs_problems = &problems[&(Kind::VirtualService, key.clone())];
    assert_eq!(
        vs_problems,
        &[
            "VirtualService shop/web: spec.http[0].corsPolicy: not supported by amesh waypoints; \
           ignored"
        ]
    );

    assert!(write(&client, Kind::VirtualService, &key, vs_problems)
        .await
        .expect("written"));
    let patch = api
        .objects
        .recorded()
        .into_iter()
        .find(|r| r.method == "PATCH")
        .expect("a status apply");
    assert_eq!(patch.path, VS_STATUS);
    assert_eq!(patch.content_type, APPLY);
    let condition = &patch.body["status"]["conditions"][0];
    assert_eq!(condition["type"], "Accepted");
    assert_eq!(condition["status"], "True");
    assert_eq!(condition["reason"], "UnsupportedValue");
    assert_eq!(condition["observedGeneration"], 3);
    assert_eq!(condition["message"], vs_problems[0].as_str());
    let stored = api.objects.get("virtualservices", "shop", "web").unwrap();
    assert_eq!(
        stored["status"]["conditions"][0]["reason"],
        "UnsupportedValue"
    );

    // The same problems again: nothing written.
    let writes = api.objects.writes().len();
    assert!(!write(&client, Kind::VirtualService, &key, vs_problems)
        .await
        .expect("read"));
    assert_eq!(api.objects.writes().len(), writes);

    // The DestinationRule's TLS is reported on its own status.
    let dr_problems = &problems[&(Kind::DestinationRule, key.clone())];
    assert!(write(&client, Kind::DestinationRule, &key, dr_problems)
        .await
        .expect("written"));
    let stored = api.objects.get("destinationrules", "shop", "web").unwrap();
    let message = stored["status"]["conditions"][0]["message"]
        .as_str()
        .unwrap();
    assert!(message.contains("spec.trafficPolicy.tls"), "{message}");

    // Fixed: the condition says so.
    assert!(write(&client, Kind::VirtualService, &key, &[])
        .await
        .expect("written"));
    let stored = api.objects.get("virtualservices", "shop", "web").unwrap();
    assert_eq!(stored["status"]["conditions"][0]["reason"], "Accepted");

    // A deleted object is not written.
    api.objects.remove("virtualservices", "shop", "web");
    assert!(!write(&client, Kind::VirtualService, &key, vs_problems)
        .await
        .expect("gone is fine"));
}

/// The Kubernetes source types both kinds from the API's JSON as the folder does, keeping
/// the fields amesh does not model for the report, and rejecting a malformed value by field.
#[test]
fn the_kubernetes_source_reads_both_kinds() {
    use controller::manifests::Object;
    use kube::core::DynamicObject;

    let object: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {
            "hosts": ["web"],
            "tcp": [{"route": [{"destination": {"host": "web"}}]}],
            "http": [{"route": [{"destination": {"host": "web"}, "weight": 100}]}],
        },
    }))
    .unwrap();
    let Ok(Object::VirtualService(vs)) = Kind::VirtualService.convert(object) else {
        panic!("a VirtualService");
    };
    assert_eq!(vs.spec.other.keys().collect::<Vec<_>>(), ["tcp"]);
    assert_eq!(vs.spec.http[0].route[0].weight, Some(100));

    let object: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"host": "web", "trafficPolicy": {"connectionPool": {"tcp": {"connectTimeout": "soon"}}}},
    }))
    .unwrap();
    let rejected = Kind::DestinationRule
        .convert(object)
        .expect_err("bad duration");
    assert_eq!(
        rejected.field.as_deref(),
        Some("spec.trafficPolicy.connectionPool.tcp.connectTimeout")
    );
}
