//! Rendering of the waypoint's request authentication and rate limit resources.

use amesh_proto::amesh::l7::v1 as l7;
use serde_yaml::Value;

use super::Obj;

fn strings(v: &[String]) -> Vec<Value> {
    v.iter().map(|s| Value::from(s.as_str())).collect()
}

fn targets(t: &[l7::TargetRef]) -> Vec<Value> {
    t.iter()
        .map(|t| Value::from(format!("{} {}/{}", t.kind, t.namespace, t.name)))
        .collect()
}

/// One `amesh.l7.v1.RequestAuthentication`.
pub fn request_authentication(a: &l7::RequestAuthentication) -> Value {
    let mut m = Obj::default();
    m.list("targets", targets(&a.targets));
    let rules = a
        .rules
        .iter()
        .map(|r| {
            let mut o = Obj::default();
            o.str("issuer", &r.issuer);
            o.list("audiences", strings(&r.audiences));
            o.str("jwksUri", &r.jwks_uri);
            o.str("jwks", &r.jwks);
            o.list(
                "fromHeaders",
                r.from_headers
                    .iter()
                    .map(|h| {
                        let mut hm = Obj::default();
                        hm.str("name", &h.name);
                        hm.str("prefix", &h.prefix);
                        hm.done()
                    })
                    .collect(),
            );
            o.list("fromParams", strings(&r.from_params));
            o.flag("forwardOriginalToken", r.forward_original_token);
            o.str("outputPayloadToHeader", &r.output_payload_to_header);
            o.list(
                "outputClaimToHeaders",
                r.output_claim_to_headers
                    .iter()
                    .map(|c| Value::from(format!("{} <- {}", c.header, c.claim)))
                    .collect(),
            );
            o.done()
        })
        .collect();
    // Always shown: no rules means no token verifies.
    m.val("rules", Value::Sequence(rules));
    m.done()
}

/// One `amesh.l7.v1.RateLimit`.
pub fn rate_limit(r: &l7::RateLimit) -> Value {
    let mut m = Obj::default();
    m.list("targets", targets(&r.targets));
    m.num("totalRps", r.total_rps);
    m.num("identityRps", r.identity_rps);
    m.list(
        "overrides",
        r.overrides
            .iter()
            .map(|o| {
                let mut om = Obj::default();
                om.num("rps", o.rps);
                om.list("principals", strings(&o.principals));
                om.done()
            })
            .collect(),
    );
    m.done()
}
