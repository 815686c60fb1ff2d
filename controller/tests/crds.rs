//! amesh's own CRDs: `deploy/base/policy-crds.yaml` is exactly what the Rust types generate
//! (`UPDATE_CRDS=1` rewrites it), and the generated schema, applied the way the API server
//! validates a custom object, accepts every HTTPLocalRateLimitPolicy the controller accepts (the
//! repository's examples and the policy tests' shapes) and refuses the shapes it can judge alone.

use std::path::{Path, PathBuf};

use controller::crds::{policy_crds_yaml, POLICY_CRDS_FILE};
use serde_json::{json, Value};

const UPDATE: &str = "UPDATE_CRDS=1 cargo test -p amesh-controller --test crds";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn the_policy_crds_file_is_what_the_types_generate() {
    let generated = policy_crds_yaml().unwrap();
    let path = repo().join(POLICY_CRDS_FILE);
    if std::env::var_os("UPDATE_CRDS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let on_disk = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{POLICY_CRDS_FILE}: {e}; create it with `{UPDATE}`"));
    assert!(
        on_disk == generated,
        "{POLICY_CRDS_FILE} is not what the Rust types generate; regenerate it with `{UPDATE}`\n\
         --- generated ---\n{generated}"
    );
}

/// The generated CRD, as plain JSON.
fn crd() -> Value {
    let crds = controller::crds::policy_crds();
    assert_eq!(crds.len(), 1);
    serde_json::to_value(&crds[0]).unwrap()
}

/// The schema of `spec` in the served version.
fn spec_schema() -> Value {
    let crd = crd();
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    version["schema"]["openAPIV3Schema"]["properties"]["spec"].clone()
}

/// Checks `value` against `schema` for the keywords the generated schema uses, as the API
/// server's validation of a custom object does; the first fault, with its path.
fn admit(schema: &Value, value: &Value, path: &str) -> Result<(), String> {
    let fault = |why: String| Err(format!("{path}: {why}"));
    if value.is_null() {
        // The API server prunes a null it is not told to keep; nullable keeps it as valid.
        return Ok(());
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(value) {
            return fault(format!("{value} is not one of {allowed:?}"));
        }
    }
    match schema["type"].as_str() {
        Some("object") => {
            let Some(map) = value.as_object() else {
                return fault(format!("{value} is not an object"));
            };
            for required in schema["required"].as_array().into_iter().flatten() {
                if !map.contains_key(required.as_str().unwrap()) {
                    return fault(format!("{required} is required"));
                }
            }
            if schema["x-kubernetes-preserve-unknown-fields"] == true {
                return Ok(());
            }
            for (key, item) in map {
                match schema["properties"].get(key) {
                    Some(inner) => admit(inner, item, &format!("{path}.{key}"))?,
                    None => {
                        return fault(format!("{key} is not a field (the API server drops it)"))
                    }
                }
            }
            Ok(())
        }
        Some("array") => {
            let Some(items) = value.as_array() else {
                return fault(format!("{value} is not an array"));
            };
            if let Some(min) = schema["minItems"].as_u64() {
                if (items.len() as u64) < min {
                    return fault(format!("fewer than {min} items"));
                }
            }
            items
                .iter()
                .enumerate()
                .try_for_each(|(i, item)| admit(&schema["items"], item, &format!("{path}[{i}]")))
        }
        Some("string") => {
            let Some(text) = value.as_str() else {
                return fault(format!("{value} is not a string"));
            };
            if let Some(min) = schema["minLength"].as_u64() {
                if (text.chars().count() as u64) < min {
                    return fault(format!("shorter than {min}"));
                }
            }
            Ok(())
        }
        Some("integer") => {
            let Some(n) = value.as_i64() else {
                return fault(format!("{value} is not an integer"));
            };
            // The API types keep bounds as f64: 1.0, 4294967295.0 (exact).
            if schema["minimum"]
                .as_f64()
                .is_some_and(|min| (n as f64) < min)
            {
                return fault(format!("{n} is below {}", schema["minimum"]));
            }
            if schema["maximum"]
                .as_f64()
                .is_some_and(|max| (n as f64) > max)
            {
                return fault(format!("{n} is above {}", schema["maximum"]));
            }
            Ok(())
        }
        other => fault(format!("schema type {other:?} is not structural")),
    }
}

/// What the controller says of `spec`: parsed and validated, or why not.
fn controller_accepts(spec: &Value) -> Result<(), String> {
    use controller::manifests::ratelimit::{validate, HttpLocalRateLimitPolicySpec};
    let parsed: HttpLocalRateLimitPolicySpec =
        serde_json::from_value(spec.clone()).map_err(|e| e.to_string())?;
    validate(&parsed).map_err(|e| format!("{}: {}", e.field, e.message))
}

/// Every HTTPLocalRateLimitPolicy spec of the controller's golden inputs, by file.
fn golden_specs() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let golden = repo().join("controller/tests/golden");
    for case in std::fs::read_dir(&golden).unwrap() {
        let input = case.unwrap().path().join("input");
        let Ok(files) = std::fs::read_dir(&input) else {
            continue;
        };
        for file in files {
            let file = file.unwrap().path();
            let text = std::fs::read_to_string(&file).unwrap();
            for doc in serde_yaml::Deserializer::from_str(&text) {
                let doc: Value = serde::Deserialize::deserialize(doc).unwrap();
                if doc["kind"] == "HTTPLocalRateLimitPolicy" {
                    out.push((file.display().to_string(), doc["spec"].clone()));
                }
            }
        }
    }
    out
}

#[test]
fn the_schema_admits_every_policy_the_controller_accepts() {
    let schema = spec_schema();
    let mut specs = golden_specs();
    assert!(
        specs.len() >= 3,
        "the rate_limit golden case has three policies"
    );
    // The unit tests' and the e2e test's shapes, and the edges the parser allows.
    for (name, spec) in [
        (
            "linkerd shape",
            json!({
                "targetRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "waypoint"},
                "total": {"requestsPerSecond": 100},
                "identity": {"requestsPerSecond": 20},
                "overrides": [{"requestsPerSecond": 50, "clientRefs": [
                    {"kind": "ServiceAccount", "name": "batch", "namespace": "jobs"}
                ]}]
            }),
        ),
        (
            "e2e",
            json!({"targetRef": {"kind": "Service", "name": "limited"}, "total": {"requestsPerSecond": 10}}),
        ),
        (
            "core group, nulls, the largest rate",
            json!({
                "targetRef": null,
                "targetRefs": [{"group": "", "kind": "Service", "name": "api", "namespace": "shop"}],
                "overrides": null,
                "identity": {"requestsPerSecond": 4294967295u64}
            }),
        ),
        (
            "client of group core",
            json!({
                "targetRefs": [{"kind": "Gateway", "name": "waypoint"}],
                "overrides": [{"requestsPerSecond": 1, "clientRefs": [
                    {"group": "core", "kind": "ServiceAccount", "name": "a"}
                ]}]
            }),
        ),
    ] {
        specs.push((name.to_owned(), spec));
    }
    for (name, spec) in &specs {
        controller_accepts(spec).unwrap_or_else(|e| panic!("{name}: the controller refuses: {e}"));
        admit(&schema, spec, "spec").unwrap_or_else(|e| panic!("{name}: the schema refuses {e}"));
    }
}

#[test]
fn the_schema_refuses_what_it_can_judge_alone_and_so_does_the_controller() {
    let schema = spec_schema();
    let target = json!({"kind": "Gateway", "name": "waypoint"});
    for (spec, field) in [
        (
            json!({"targetRef": target, "total": {"requestsPerSecond": 0}}),
            "spec.total.requestsPerSecond",
        ),
        (
            json!({"targetRef": target, "identity": {"requestsPerSecond": 4294967296u64}}),
            "spec.identity.requestsPerSecond",
        ),
        (json!({"targetRef": target, "total": {}}), "spec.total"),
        (json!({"targetRef": {"name": "waypoint"}}), "spec.targetRef"),
        (
            json!({"targetRef": target, "overrides": [{"requestsPerSecond": 1, "clientRefs": []}]}),
            "spec.overrides[0].clientRefs",
        ),
        (
            json!({"targetRef": target, "overrides": [{"requestsPerSecond": 1, "clientRefs": [{"kind": "Pod", "name": "x"}]}]}),
            "spec.overrides[0].clientRefs[0].kind",
        ),
        (
            json!({"targetRef": target, "total": {"requestPerSecond": 1}}),
            "spec.total",
        ),
    ] {
        let refused = admit(&schema, &spec, "spec").expect_err(&spec.to_string());
        assert!(
            refused.starts_with(&format!("{field}:")),
            "{refused} (expected {field})"
        );
        assert!(
            controller_accepts(&spec).is_err(),
            "the controller accepts {spec}"
        );
    }
    // Refused on admission, as the CRD written by hand before did, though the controller
    // would read them (and then find no such target): an empty name; a target that is not a
    // waypoint Gateway or a Service, in both forms.
    for spec in [
        json!({"targetRef": {"kind": "Gateway", "name": ""}}),
        json!({"targetRef": {"kind": "HTTPRoute", "name": "r"}}),
        json!({"targetRefs": [{"kind": "ServiceEntry", "name": "r"}]}),
    ] {
        assert!(admit(&schema, &spec, "spec").is_err(), "{spec}");
    }
}

/// The shape the API server requires of a CRD schema (structural): every node typed, objects
/// with properties or kept open, arrays with items, no defaults, nothing in `additionalProperties`
/// beside `properties`; the status subresource and the printer columns' paths exist.
#[test]
fn the_generated_crd_is_structural_with_its_columns_and_status() {
    fn structural(schema: &Value, path: &str) {
        let kind = schema["type"]
            .as_str()
            .unwrap_or_else(|| panic!("{path}: no type"));
        assert!(schema.get("default").is_none(), "{path}: a default");
        assert!(schema.get("additionalProperties").is_none(), "{path}");
        assert!(
            schema.get("anyOf").is_none() && schema.get("oneOf").is_none(),
            "{path}"
        );
        match kind {
            "object" => {
                let open = schema["x-kubernetes-preserve-unknown-fields"] == true;
                let properties = schema["properties"].as_object();
                assert!(
                    open || properties.is_some(),
                    "{path}: an object with no properties"
                );
                for (key, inner) in properties.into_iter().flatten() {
                    structural(inner, &format!("{path}.{key}"));
                }
            }
            "array" => structural(&schema["items"], &format!("{path}[]")),
            "string" | "integer" | "boolean" | "number" => {}
            other => panic!("{path}: type {other}"),
        }
    }
    let crd = crd();
    assert_eq!(
        crd["metadata"]["name"],
        "httplocalratelimitpolicies.policy.amesh.io"
    );
    assert_eq!(
        crd["spec"]["names"]["listKind"],
        "HTTPLocalRateLimitPolicyList"
    );
    let version = &crd["spec"]["versions"][0];
    let root = &version["schema"]["openAPIV3Schema"];
    structural(root, "openAPIV3Schema");
    assert!(root.get("title").is_none(), "no Rust type name in the CRD");
    assert!(version["subresources"]["status"].is_object());
    for column in version["additionalPrinterColumns"].as_array().unwrap() {
        let path = column["jsonPath"].as_str().unwrap();
        if path.starts_with(".metadata") {
            continue;
        }
        let mut at = root;
        for part in path.trim_start_matches('.').split('.') {
            at = &at["properties"][part];
        }
        assert_eq!(at["type"], column["type"], "{path}");
    }
}
