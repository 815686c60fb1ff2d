//! RequestAuthentication bound with `targetRefs` (or `targetRef`) →
//! `amesh.l7.v1.RequestAuthentication`, for the waypoints that enforce it (the same targeting
//! rules as AuthorizationPolicy, `l7_authz.rs`). ztunnel never gets these: JWTs are HTTP.
//!
//! - Each `jwtRules` entry keeps Istio's fields: `issuer`, `audiences`, `fromHeaders` (name and
//!   prefix), `fromParams`, `forwardOriginalToken`, `outputPayloadToHeader`,
//!   `outputClaimToHeaders`.
//! - Keys: an inline `jwks` as written; a `jwksUri` is resolved the way istiod resolves it,
//!   by the controller fetching it (`jwks.rs`) — the translation takes the fetched documents
//!   as an input (`uri → JWKS JSON`) and stays a pure function. A uri not fetched yet gives an
//!   empty `jwks` and a warning: the waypoint then rejects that issuer's tokens until the keys
//!   arrive (istiod serves a fake key for the same effect). Neither set (OIDC discovery from
//!   the issuer) is not supported: warning, empty keys.
//! - Unsupported fields are warnings: `fromCookies` (tokens there are not looked for),
//!   `timeout` (the fetcher's own timeout applies).
//! - Policies with a `selector` (or neither selector nor targets) are for sidecars and
//!   gateways that amesh does not run: warned about, not sent. A policy failing validation
//!   (only from a source that does not validate on load) is sent with no rules: no token
//!   verifies, so no request principal is set and policies requiring one deny (fail closed).

use std::collections::BTreeMap;

use amesh_proto::amesh::l7::v1::{ClaimToHeader, JwtHeader, JwtRule, RequestAuthentication};

use super::l7_authz::resolve_targets;
use super::L7Resource;
use crate::manifests::security::{self, RequestAuthentication as Manifest};
use crate::manifests::{validate, Manifests, ObjectKey};
use crate::model::Model;
use crate::warnings::Warnings;

/// JWKS documents fetched by the controller, by `jwksUri`.
pub type JwksDocuments = BTreeMap<String, String>;

/// The request authentications of every RequestAuthentication with targets, sorted by
/// `<ns>/<name>`.
pub(crate) fn request_authentications(
    m: &Manifests,
    model: &Model,
    bindings: &BTreeMap<ObjectKey, ObjectKey>,
    jwks: &JwksDocuments,
    warnings: &mut Warnings,
) -> Vec<L7Resource<RequestAuthentication>> {
    let mut out = Vec::new();
    for (key, policy) in &m.request_authentications {
        let spec = &policy.spec;
        if spec.target_ref.is_none() && spec.target_refs.is_empty() {
            warnings.push(format!(
                "RequestAuthentication {key} has no targetRefs: amesh validates JWTs in \
                 waypoints only (bind it to a waypoint Gateway or a Service); not enforced"
            ));
            continue;
        }
        out.push(convert(key, policy, model, bindings, jwks, warnings));
    }
    out
}

fn convert(
    key: &ObjectKey,
    policy: &Manifest,
    model: &Model,
    bindings: &BTreeMap<ObjectKey, ObjectKey>,
    jwks: &JwksDocuments,
    warnings: &mut Warnings,
) -> L7Resource<RequestAuthentication> {
    let spec = &policy.spec;
    let what = format!("RequestAuthentication {key}");
    let refs = spec.target_ref.iter().chain(&spec.target_refs);
    let (targets, waypoints) = resolve_targets(key, &what, refs, model, bindings, warnings);
    let rules = match validate::request_authentication(spec) {
        Ok(()) => spec
            .jwt_rules
            .iter()
            .enumerate()
            .map(|(i, r)| convert_rule(r, &format!("{what} spec.jwtRules[{i}]"), jwks, warnings))
            .collect(),
        Err(e) => {
            warnings.push(format!(
                "{what} is invalid ({e}); sent without rules, so no token verifies under it"
            ));
            Vec::new()
        }
    };
    L7Resource {
        name: key.to_string(),
        waypoints,
        resource: RequestAuthentication {
            name: key.name.clone(),
            namespace: key.namespace.clone(),
            targets,
            rules,
        },
    }
}

fn convert_rule(
    r: &security::JwtRule,
    what: &str,
    documents: &JwksDocuments,
    warnings: &mut Warnings,
) -> JwtRule {
    let (jwks, jwks_uri) = match (&r.jwks, &r.jwks_uri) {
        (Some(inline), _) => (inline.clone(), String::new()),
        (None, Some(uri)) => match documents.get(uri) {
            Some(doc) => (doc.clone(), uri.clone()),
            None => {
                warnings.push(format!(
                    "{what}: the keys of jwksUri {uri} have not been fetched (yet); tokens of \
                     issuer {} are rejected until they are",
                    r.issuer
                ));
                (String::new(), uri.clone())
            }
        },
        (None, None) => {
            warnings.push(format!(
                "{what}: neither jwks nor jwksUri is set; amesh does not discover keys from \
                 the issuer (OpenID discovery), so tokens of issuer {} are rejected",
                r.issuer
            ));
            (String::new(), String::new())
        }
    };
    if !r.from_cookies.is_empty() {
        warnings.push(format!(
            "{what}.fromCookies is not supported by amesh's waypoint; tokens in cookies are \
             not looked for"
        ));
    }
    if r.timeout.is_some() {
        warnings.push(format!(
            "{what}.timeout is not supported; the controller's JWKS fetch timeout applies"
        ));
    }
    JwtRule {
        issuer: r.issuer.clone(),
        audiences: r.audiences.clone(),
        jwks,
        jwks_uri,
        from_headers: r
            .from_headers
            .iter()
            .map(|h| JwtHeader {
                name: h.name.clone(),
                prefix: h.prefix.clone().unwrap_or_default(),
            })
            .collect(),
        from_params: r.from_params.clone(),
        forward_original_token: r.forward_original_token,
        output_payload_to_header: r.output_payload_to_header.clone().unwrap_or_default(),
        output_claim_to_headers: r
            .output_claim_to_headers
            .iter()
            .map(|c| ClaimToHeader {
                header: c.header.clone(),
                claim: c.claim.clone(),
            })
            .collect(),
    }
}

/// Every `jwksUri` the manifests' waypoint RequestAuthentications name, sorted: what the
/// controller's fetcher keeps keys for.
pub fn jwks_uris(m: &Manifests) -> Vec<String> {
    let mut uris: Vec<String> = m
        .request_authentications
        .values()
        .filter(|p| p.spec.target_ref.is_some() || !p.spec.target_refs.is_empty())
        .flat_map(|p| &p.spec.jwt_rules)
        .filter(|r| r.jwks.is_none())
        .filter_map(|r| r.jwks_uri.clone())
        .collect();
    uris.sort();
    uris.dedup();
    uris
}
