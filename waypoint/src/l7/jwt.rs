//! Request authentication (Istio's RequestAuthentication, as Envoy's `jwt_authn` filter applies
//! it): `amesh.l7.v1.RequestAuthentication` converted once into parsed JWKS keys and token
//! locations, and the per-request check.
//!
//! Semantics, following Envoy as Istio configures it (one provider per `jwtRules` entry, the
//! requirement "any provider, or no token at all"):
//!
//! - The token is looked for where the rules say (`fromHeaders` with their prefix,
//!   `fromParams`), or, for a rule naming neither, in `Authorization: Bearer <token>` and the
//!   `access_token` query parameter. No token anywhere → the request goes on without a request
//!   principal (AuthorizationPolicy decides).
//! - A token must verify under a rule whose `issuer` equals its `iss` and that looks where the
//!   token was found: signature with the rule's JWKS (the key of the header's `kid`, else
//!   every key of the algorithm's family, and the JWK's `alg` must agree), `exp` and `nbf` with
//!   Envoy's default clock skew of 60 s (a token without `exp` does not expire, as in Envoy),
//!   and `aud` containing one of `audiences` when the rule lists any. Failing → 401 with
//!   Envoy's message for the reason.
//! - Output headers (payload, claims) a client sent are always dropped: only a verified token
//!   sets them.
//! - On success: request principal `<iss>/<sub>`, claims for authorization, the token removed
//!   from its header unless `forwardOriginalToken` (a query parameter is left in place, as
//!   Envoy leaves it), `outputPayloadToHeader` gets the payload as it was in the token
//!   (base64url), `outputClaimToHeaders` gets string, number and boolean claims.

use std::sync::Arc;

use amesh_proto::amesh::l7::v1 as pb;
use base64::Engine as _;
use http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::authz::Target;
use super::ConvertError;

/// Envoy's default `clock_skew_seconds`.
pub const CLOCK_SKEW_SECS: u64 = 60;

/// One converted RequestAuthentication.
#[derive(Debug)]
pub struct JwtPolicy {
    /// `<namespace>/<name>`.
    pub key: String,
    pub targets: Vec<Target>,
    rules: Vec<Rule>,
}

#[derive(Debug)]
struct Rule {
    issuer: String,
    audiences: Vec<String>,
    keys: Vec<Key>,
    /// Where the keys came from (logs).
    jwks_uri: String,
    locations: Vec<Location>,
    forward_original_token: bool,
    output_payload_to_header: Option<HeaderName>,
    output_claim_to_headers: Vec<(HeaderName, String)>,
}

struct Key {
    kid: Option<String>,
    /// The JWK's own `alg`, when it names one.
    alg: Option<Algorithm>,
    key: DecodingKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// Where a token may be.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Location {
    Header { name: HeaderName, prefix: String },
    Param(String),
}

/// A verified token, as authorization reads it.
#[derive(Debug, Clone)]
pub struct Verified {
    /// `<iss>/<sub>`: Istio's request principal.
    pub principal: String,
    /// The payload's claims.
    pub claims: Map<String, Value>,
}

/// The outcome for one request.
#[derive(Debug)]
pub enum Outcome {
    /// No token where any rule looks (or no policy applies).
    NoToken,
    /// The token verified; the request has been rewritten (token removed, outputs added).
    Verified(Arc<Verified>),
    /// A token that verifies under no rule: Envoy's message, and the detail for logs.
    Failed {
        message: &'static str,
        detail: String,
    },
}

impl JwtPolicy {
    pub fn from_proto(p: pb::RequestAuthentication) -> Result<Self, ConvertError> {
        let key = format!("{}/{}", p.namespace, p.name);
        let targets = super::authz::targets(&key, &p.namespace, p.targets)?;
        let mut rules = Vec::with_capacity(p.rules.len());
        for (i, r) in p.rules.into_iter().enumerate() {
            rules.push(Rule::from_proto(&key, i, r)?);
        }
        Ok(JwtPolicy {
            key,
            targets,
            rules,
        })
    }
}

impl Rule {
    fn from_proto(policy: &str, i: usize, r: pb::JwtRule) -> Result<Self, ConvertError> {
        let at = |f: &str| format!("rules[{i}].{f}");
        if r.issuer.is_empty() {
            return Err(ConvertError::new(policy, at("issuer"), "must not be empty"));
        }
        let keys = if r.jwks.trim().is_empty() {
            // Not fetched yet: every token of this issuer fails, as in istiod's fallback.
            tracing::warn!(policy, issuer = %r.issuer, jwks_uri = %r.jwks_uri, "no JWKS keys yet for this issuer; its tokens are rejected");
            Vec::new()
        } else {
            parse_jwks(&r.jwks).map_err(|e| ConvertError::new(policy, at("jwks"), e))?
        };
        let mut locations = Vec::new();
        for (j, h) in r.from_headers.iter().enumerate() {
            let name =
                HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes()).map_err(|e| {
                    ConvertError::new(policy, at(&format!("fromHeaders[{j}].name")), e.to_string())
                })?;
            locations.push(Location::Header {
                name,
                prefix: h.prefix.clone(),
            });
        }
        locations.extend(r.from_params.iter().cloned().map(Location::Param));
        if locations.is_empty() {
            locations = default_locations();
        }
        let output_payload_to_header = match r.output_payload_to_header.as_str() {
            "" => None,
            h => Some(
                header_name(h)
                    .map_err(|e| ConvertError::new(policy, at("outputPayloadToHeader"), e))?,
            ),
        };
        let mut output_claim_to_headers = Vec::new();
        for (j, c) in r.output_claim_to_headers.into_iter().enumerate() {
            let name = header_name(&c.header).map_err(|e| {
                ConvertError::new(policy, at(&format!("outputClaimToHeaders[{j}].header")), e)
            })?;
            output_claim_to_headers.push((name, c.claim));
        }
        Ok(Rule {
            issuer: r.issuer,
            audiences: r.audiences,
            keys,
            jwks_uri: r.jwks_uri,
            locations,
            forward_original_token: r.forward_original_token,
            output_payload_to_header,
            output_claim_to_headers,
        })
    }
}

fn default_locations() -> Vec<Location> {
    vec![
        Location::Header {
            name: AUTHORIZATION,
            prefix: "Bearer ".to_owned(),
        },
        Location::Param("access_token".to_owned()),
    ]
}

fn header_name(h: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())
        .map_err(|e| format!("{h:?} is not a header name: {e}"))
}

/// The keys of a JWKS document. A key of a type the crate cannot use is skipped (a JWKS may
/// hold keys for other purposes); a document that is not a JWKS, or has no usable key, is an
/// error.
fn parse_jwks(jwks: &str) -> Result<Vec<Key>, String> {
    let doc: Value =
        serde_json::from_str(jwks).map_err(|e| format!("not JSON (a JWKS document): {e}"))?;
    let list = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("not a JWKS document: no \"keys\" array")?;
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    for (i, k) in list.iter().enumerate() {
        let parsed = serde_json::from_value::<Jwk>(k.clone())
            .map_err(|e| e.to_string())
            .and_then(|jwk| {
                let key = DecodingKey::from_jwk(&jwk).map_err(|e| e.to_string())?;
                // The JWK's `alg` spelled as a JWS algorithm (an encryption one names none).
                let alg = k
                    .get("alg")
                    .and_then(Value::as_str)
                    .and_then(|a| a.parse::<Algorithm>().ok());
                Ok(Key {
                    kid: jwk.common.key_id,
                    alg,
                    key,
                })
            });
        match parsed {
            Ok(key) => keys.push(key),
            Err(e) => skipped.push(format!("keys[{i}]: {e}")),
        }
    }
    if keys.is_empty() {
        return Err(format!("no usable key ({})", skipped.join("; ")));
    }
    if !skipped.is_empty() {
        tracing::warn!(skipped = ?skipped, "JWKS keys skipped");
    }
    Ok(keys)
}

/// Checks the request under the `policies` that apply to it; on success rewrites its headers
/// (token removal, output headers).
pub fn authenticate<'p>(
    policies: impl IntoIterator<Item = &'p JwtPolicy>,
    headers: &mut HeaderMap,
    query: Option<&str>,
) -> Outcome {
    let rules: Vec<&Rule> = policies.into_iter().flat_map(|p| &p.rules).collect();
    if rules.is_empty() {
        return Outcome::NoToken;
    }
    // The output headers carry what a verified token says: a client's own copies are never
    // passed on (the app would take a forged claim for a proven one), with or without a token.
    for r in &rules {
        if let Some(h) = &r.output_payload_to_header {
            headers.remove(h);
        }
        for (h, _) in &r.output_claim_to_headers {
            headers.remove(h);
        }
    }
    // Every distinct location of every rule, each looked at once.
    let mut locations: Vec<&Location> = Vec::new();
    for r in &rules {
        for l in &r.locations {
            if !locations.contains(&l) {
                locations.push(l);
            }
        }
    }
    let mut failure = None;
    for location in locations {
        let Some(token) = find_token(location, headers, query) else {
            continue;
        };
        match verify_any(&rules, location, &token) {
            Ok((rule, verified, payload_b64)) => {
                apply_outputs(rule, location, headers, &verified, &payload_b64);
                return Outcome::Verified(Arc::new(verified));
            }
            Err(e) => failure = failure.or(Some(e)),
        }
    }
    match failure {
        Some((message, detail)) => Outcome::Failed { message, detail },
        None => Outcome::NoToken,
    }
}

fn find_token(location: &Location, headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    match location {
        Location::Header { name, prefix } => headers.get_all(name).iter().find_map(|v| {
            let v = v.to_str().ok()?;
            let rest = if prefix.is_empty() {
                v
            } else if v.len() >= prefix.len()
                && v.is_char_boundary(prefix.len())
                && v[..prefix.len()].eq_ignore_ascii_case(prefix)
            {
                // Envoy compares the prefix exactly; "bearer " is accepted too because clients
                // send both spellings of the scheme, which RFC 6750 treats alike.
                &v[prefix.len()..]
            } else {
                return None;
            };
            let t = rest.trim();
            (!t.is_empty()).then(|| t.to_owned())
        }),
        Location::Param(name) => query?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k == name && !v.is_empty()).then(|| v.to_owned())
        }),
    }
}

type Failure = (&'static str, String);

/// The first rule (of those looking at `location`) under which `token` verifies.
fn verify_any<'r>(
    rules: &[&'r Rule],
    location: &Location,
    token: &str,
) -> Result<(&'r Rule, Verified, String), Failure> {
    let (payload_b64, payload) = unverified_payload(token)?;
    let iss = payload.get("iss").and_then(Value::as_str).unwrap_or("");
    let candidates: Vec<&&Rule> = rules
        .iter()
        .filter(|r| r.issuer == iss && r.locations.contains(location))
        .collect();
    if candidates.is_empty() {
        return Err((
            "Jwt issuer is not configured",
            format!("no rule for issuer {iss:?} at this location"),
        ));
    }
    let mut last = None;
    for rule in candidates {
        match verify(rule, token) {
            Ok(claims) => {
                let sub = claims.get("sub").and_then(Value::as_str).unwrap_or("");
                let verified = Verified {
                    principal: format!("{iss}/{sub}"),
                    claims,
                };
                return Ok((rule, verified, payload_b64));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or(("Jwt verification fails", String::new())))
}

/// The payload segment and its JSON, read before verification only to pick the rule.
fn unverified_payload(token: &str) -> Result<(String, Map<String, Value>), Failure> {
    const MALFORMED: &str =
        "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections";
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err((MALFORMED, "not three dot-separated parts".into()));
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|e| (MALFORMED, format!("payload is not base64url: {e}")))?;
    let claims: Map<String, Value> = serde_json::from_slice(&bytes)
        .map_err(|e| ("Jwt payload is an invalid JSON", e.to_string()))?;
    Ok((payload.to_owned(), claims))
}

fn verify(rule: &Rule, token: &str) -> Result<Map<String, Value>, Failure> {
    let header = jsonwebtoken::decode_header(token)
        .map_err(|e| ("Jwt header is an invalid JSON", e.to_string()))?;
    let alg = header.alg;
    let keys: Vec<&Key> = rule
        .keys
        .iter()
        .filter(|k| header.kid.is_none() || k.kid == header.kid)
        .filter(|k| k.alg.is_none_or(|a| a == alg))
        .filter(|k| k.key.family() == alg.family())
        .collect();
    if keys.is_empty() {
        return Err((
            "Jwks doesn't have key to match kid or alg from Jwt",
            format!(
                "issuer {} (keys from {:?}): no key for kid {:?} alg {alg:?}",
                rule.issuer, rule.jwks_uri, header.kid
            ),
        ));
    }
    let mut validation = Validation::new(alg);
    validation.leeway = CLOCK_SKEW_SECS;
    validation.required_spec_claims.clear();
    validation.validate_exp = true;
    validation.validate_nbf = true;
    // Checked below with Envoy's rule (any listed audience), which reads a missing `aud` as
    // not allowed.
    validation.validate_aud = false;
    validation.set_issuer(&[&rule.issuer]);
    let mut last = ("Jwt verification fails", String::new());
    for k in keys {
        match jsonwebtoken::decode::<Map<String, Value>>(token, &k.key, &validation) {
            Ok(data) => {
                check_audience(rule, &data.claims)?;
                return Ok(data.claims);
            }
            Err(e) => {
                use jsonwebtoken::errors::ErrorKind;
                let message = match e.kind() {
                    ErrorKind::ExpiredSignature => "Jwt is expired",
                    ErrorKind::ImmatureSignature => "Jwt not yet valid",
                    ErrorKind::InvalidIssuer => "Jwt issuer is not configured",
                    _ => "Jwt verification fails",
                };
                last = (message, e.to_string());
                // Only a bad signature is worth trying the next key for.
                if !matches!(e.kind(), ErrorKind::InvalidSignature) {
                    break;
                }
            }
        }
    }
    Err(last)
}

fn check_audience(rule: &Rule, claims: &Map<String, Value>) -> Result<(), Failure> {
    if rule.audiences.is_empty() {
        return Ok(());
    }
    let ok = match claims.get("aud") {
        Some(Value::String(a)) => rule.audiences.contains(a),
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(Value::as_str)
            .any(|a| rule.audiences.iter().any(|r| r == a)),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err((
            "Audiences in Jwt are not allowed",
            format!("aud {:?} not in {:?}", claims.get("aud"), rule.audiences),
        ))
    }
}

fn apply_outputs(
    rule: &Rule,
    location: &Location,
    headers: &mut HeaderMap,
    verified: &Verified,
    payload_b64: &str,
) {
    if !rule.forward_original_token {
        if let Location::Header { name, .. } = location {
            headers.remove(name);
        }
    }
    if let Some(h) = &rule.output_payload_to_header {
        if let Ok(v) = HeaderValue::from_str(payload_b64) {
            headers.insert(h.clone(), v);
        }
    }
    for (h, claim) in &rule.output_claim_to_headers {
        let value = match verified.claims.get(claim) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            Some(Value::Bool(b)) => b.to_string(),
            _ => continue,
        };
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(h.clone(), v);
        }
    }
}

impl Verified {
    /// The claim at `path` (`["a", "b"]` for `claims[a][b]`).
    pub fn claim(&self, path: &[String]) -> Option<&Value> {
        let (first, rest) = path.split_first()?;
        let mut v = self.claims.get(first)?;
        for p in rest {
            v = v.as_object()?.get(p)?;
        }
        Some(v)
    }

    /// The string values of a claim: a string, the strings of a list, or a number or boolean
    /// written out (Istio compares claims as strings).
    pub fn claim_strings(&self, path: &[String]) -> Vec<String> {
        match self.claim(path) {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(list)) => list.iter().filter_map(scalar).collect(),
            Some(v) => scalar(v).into_iter().collect(),
            None => Vec::new(),
        }
    }
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
#[path = "jwt_tests.rs"]
mod tests;
