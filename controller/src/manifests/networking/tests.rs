//! Parsing and checking of VirtualService and DestinationRule.

use std::time::Duration;

use super::*;
use crate::manifests::{load_yaml, ManifestError, Object};

fn load_one(text: &str) -> Result<Object, Box<ManifestError>> {
    let mut loaded = load_yaml("test.yaml", text);
    if let Some(e) = loaded.errors.pop() {
        return Err(Box::new(e));
    }
    let m = loaded.manifests;
    if let Some(vs) = m.virtual_services.into_values().next() {
        return Ok(Object::VirtualService(vs));
    }
    Ok(Object::DestinationRule(
        m.destination_rules
            .into_values()
            .next()
            .expect("one object"),
    ))
}

fn invalid_field(text: &str) -> (Option<String>, String) {
    match load_one(text).map_err(|e| *e) {
        Err(ManifestError::Invalid { field, detail, .. }) => (field, detail),
        other => panic!("expected an Invalid error, got {other:?}"),
    }
}

#[test]
fn unknown_fields_are_kept_for_reporting() {
    let text = "\
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: reviews, namespace: bookinfo}
spec:
  hosts: [reviews]
  exportTo: ['.']
  http:
  - match:
    - uri: {prefix: /a}
      sourceLabels: {app: x}
    corsPolicy: {allowOrigins: [{exact: x}]}
    retries: {attempts: 3, retryRemoteLocalities: true}
    route:
    - destination: {host: reviews, subset: v1}
      weight: 100
";
    let Ok(Object::VirtualService(vs)) = load_one(text) else {
        panic!("loads");
    };
    assert_eq!(vs.spec.other.keys().collect::<Vec<_>>(), ["exportTo"]);
    let http = &vs.spec.http[0];
    assert_eq!(http.other.keys().collect::<Vec<_>>(), ["corsPolicy"]);
    assert_eq!(
        http.matches[0].other.keys().collect::<Vec<_>>(),
        ["sourceLabels"]
    );
    assert_eq!(
        http.matches[0].uri.as_ref().unwrap().prefix.as_deref(),
        Some("/a")
    );
    let retries = http.retries.as_ref().expect("retries");
    assert_eq!(retries.attempts, Some(3));
    assert_eq!(
        retries.other.keys().collect::<Vec<_>>(),
        ["retryRemoteLocalities"]
    );
    assert_eq!(http.route[0].weight, Some(100));
}

#[test]
fn malformed_values_name_their_field() {
    let (field, detail) = invalid_field(
        "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: r, namespace: ns}
spec:
  hosts: [reviews]
  http:
  - timeout: 10 seconds
    route: [{destination: {host: reviews}}]
",
    );
    assert_eq!(field.as_deref(), Some("spec.http[0].timeout"));
    assert!(detail.contains("not a duration"), "{detail}");

    let (field, _) = invalid_field(
        "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: r, namespace: ns}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews}
      weight: eighty
",
    );
    assert_eq!(field.as_deref(), Some("spec.http[0].route[0].weight"));

    let (field, detail) = invalid_field(
        "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: r, namespace: ns}
spec:
  host: reviews
  trafficPolicy:
    outlierDetection: {baseEjectionTime: 3 minutes}
",
    );
    assert_eq!(
        field.as_deref(),
        Some("spec.trafficPolicy.outlierDetection.baseEjectionTime")
    );
    assert!(detail.contains("3 minutes"), "{detail}");

    let (field, _) = invalid_field(
        "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: r, namespace: ns}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {simple: FASTEST}
",
    );
    assert_eq!(
        field.as_deref(),
        Some("spec.trafficPolicy.loadBalancer.simple")
    );

    let (field, _) = invalid_field(
        "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: r, namespace: ns}
spec:
  hosts: [reviews]
  http:
  - fault: {abort: {httpStatus: 503, percentage: {value: 150}}}
    route: [{destination: {host: reviews}}]
",
    );
    assert_eq!(
        field.as_deref(),
        Some("spec.http[0].fault.abort.percentage.value")
    );
}

#[test]
fn istio_durations() {
    let d = parse_istio_duration;
    assert_eq!(d("10s"), Ok(Duration::from_secs(10)));
    assert_eq!(d("1.5s"), Ok(Duration::from_millis(1500)));
    assert_eq!(d("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(d("1m30s"), Ok(Duration::from_secs(90)));
    assert_eq!(d("2h"), Ok(Duration::from_secs(7200)));
    assert_eq!(d("0s"), Ok(Duration::ZERO));
    for bad in ["", "10", "s", "1d", "-1s", "ten s"] {
        assert!(d(bad).is_err(), "{bad}");
    }
}
