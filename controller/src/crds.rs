//! amesh's own CustomResourceDefinitions, generated from the Rust types the controller parses
//! them with: today HTTPLocalRateLimitPolicy ([`HttpLocalRateLimitPolicyResource`], derived by
//! kube-rs from [`HttpLocalRateLimitPolicySpec`] and its schemars schema). [`POLICY_CRDS_FILE`]
//! holds [`policy_crds_yaml`]'s output; a test fails when they differ, and
//! `UPDATE_CRDS=1 cargo test -p amesh-controller --test crds` rewrites the file.
//!
//! What the schema checks on admission is declared on the types (`schemars` attributes: a rate
//! of at least 1, a ServiceAccount client, a non-empty name); what needs more than one field (a
//! per-client rate above the total, a target present) is the controller's check, which names the
//! field at fault.

use std::borrow::Cow;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray,
};
use kube::CustomResourceExt;
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::manifests::ratelimit::HttpLocalRateLimitPolicyResource;
#[cfg(doc)]
use crate::manifests::ratelimit::HttpLocalRateLimitPolicySpec;

/// The file of the repository holding [`policy_crds_yaml`], from the repository's root.
pub const POLICY_CRDS_FILE: &str = "deploy/base/policy-crds.yaml";

/// What the file says before the CRDs: what they are and how to regenerate them.
const HEADER: &str = "\
# amesh's own policy kinds (group policy.amesh.io): HTTPLocalRateLimitPolicy, the local rate
# limit a waypoint enforces (Linkerd's shape, bound with Gateway API targetRef(s) to a waypoint
# Gateway or a Service). No other project defines this group, so unlike the Gateway API CRDs
# this file is always applied with amesh (it is in deploy/base).
# The schema checks the shape on admission; the controller checks the rest (a target, no
# per-client rate above the total) and names the field at fault.
#
# Generated from the Rust types (controller/src/manifests/ratelimit.rs): do not edit. After a
# change of the types, regenerate with
#   UPDATE_CRDS=1 cargo test -p amesh-controller --test crds
";

/// A policy's `status`: kept as written (nothing in amesh writes one yet), with the status
/// subresource so that a future writer needs no CRD change.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OpenStatus(pub serde_json::Map<String, Value>);

impl JsonSchema for OpenStatus {
    fn schema_name() -> Cow<'static, str> {
        "OpenStatus".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
    }
}

/// Restricts the `kind` of the target reference(s) in `schema` to what a rate limit binds to:
/// the shared [`PolicyTargetReference`](crate::manifests::security::PolicyTargetReference) type
/// also serves Istio's policies, which allow more kinds.
pub fn gateway_or_service(schema: &mut Schema) {
    fn visit(map: &mut serde_json::Map<String, Value>) {
        if let Some(kind) = map
            .get_mut("properties")
            .and_then(|p| p.get_mut("kind"))
            .and_then(Value::as_object_mut)
        {
            kind.insert("enum".to_owned(), serde_json::json!(["Gateway", "Service"]));
        }
        // Inside `items` (targetRefs) and `anyOf` (an optional targetRef), wherever they are.
        for value in map.values_mut() {
            match value {
                Value::Object(inner) => visit(inner),
                Value::Array(items) => items
                    .iter_mut()
                    .filter_map(Value::as_object_mut)
                    .for_each(visit),
                _ => {}
            }
        }
    }
    if let Some(map) = schema.as_object_mut() {
        visit(map);
    }
}

/// amesh's CRDs, as the types define them, less what the schema generator adds that a CRD
/// must not have: the root's `title` (the Rust type's name), and the `default` of each
/// `#[serde(default)]` field. The controller reads an absent field as its default already, so
/// the API server need not store one; and the API server checks a default against the schema,
/// which `clientRefs`'s `[]` fails (at least one client).
pub fn policy_crds() -> Vec<CustomResourceDefinition> {
    let mut crd = HttpLocalRateLimitPolicyResource::crd();
    // What the API server would default it to, said as the CRD before generation said it.
    crd.spec.names.list_kind = Some(format!("{}List", crd.spec.names.kind));
    for version in &mut crd.spec.versions {
        let schema = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut());
        if let Some(schema) = schema {
            schema.title = None;
            drop_defaults(schema);
        }
    }
    vec![crd]
}

/// Removes `default` from `schema` and every schema under it.
fn drop_defaults(schema: &mut JSONSchemaProps) {
    schema.default = None;
    for property in schema.properties.iter_mut().flat_map(|p| p.values_mut()) {
        drop_defaults(property);
    }
    match &mut schema.items {
        Some(JSONSchemaPropsOrArray::Schema(items)) => drop_defaults(items),
        Some(JSONSchemaPropsOrArray::Schemas(items)) => items.iter_mut().for_each(drop_defaults),
        None => {}
    }
}

/// [`policy_crds`] as the YAML file [`POLICY_CRDS_FILE`]: a header, then one document each.
/// Whole numbers are written as integers (`minimum: 1`, not the `1.0` of the API types' `f64`).
pub fn policy_crds_yaml() -> Result<String, serde_yaml::Error> {
    let mut out = HEADER.to_owned();
    for (i, crd) in policy_crds().iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        let mut value = serde_yaml::to_value(crd)?;
        whole_numbers_as_integers(&mut value);
        out.push_str(&serde_yaml::to_string(&value)?);
    }
    Ok(out)
}

fn whole_numbers_as_integers(value: &mut serde_yaml::Value) {
    match value {
        serde_yaml::Value::Number(n) => {
            if let Some(f) = n.as_f64().filter(|f| n.is_f64() && f.fract() == 0.0) {
                if f.abs() < 9.0e15 {
                    // Exact: a whole f64 below 2^53 converts without loss.
                    *value = serde_yaml::Value::from(f as i64);
                }
            }
        }
        serde_yaml::Value::Sequence(items) => items.iter_mut().for_each(whole_numbers_as_integers),
        serde_yaml::Value::Mapping(map) => map
            .iter_mut()
            .for_each(|(_, v)| whole_numbers_as_integers(v)),
        _ => {}
    }
}
