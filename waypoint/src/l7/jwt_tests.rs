use super::*;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;

/// A signing key made for the test and its JWKS (public part only).
struct Signer {
    key: EncodingKey,
    alg: Algorithm,
    kid: String,
    jwks: String,
}

fn signer(alg: Algorithm, kid: &str) -> Signer {
    let rcgen_alg = match alg {
        Algorithm::ES256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        Algorithm::ES384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 | Algorithm::PS256 => {
            &rcgen::PKCS_RSA_SHA256
        }
        other => panic!("no test key for {other:?}"),
    };
    let pair = rcgen::KeyPair::generate_for(rcgen_alg).unwrap();
    let key = match alg.family() {
        jsonwebtoken::AlgorithmFamily::Ec => EncodingKey::from_ec_der(&pair.serialize_der()),
        _ => EncodingKey::from_rsa_der(pkcs1_of_pkcs8(&pair.serialize_der())),
    };
    let mut jwk = Jwk::from_encoding_key(&key, alg).unwrap();
    jwk.common.key_id = Some(kid.to_owned());
    let jwks = json!({ "keys": [jwk] }).to_string();
    Signer {
        key,
        alg,
        kid: kid.to_owned(),
        jwks,
    }
}

/// The RSAPrivateKey (PKCS#1) inside a PKCS#8 PrivateKeyInfo, which is what aws-lc's RSA
/// signer reads: SEQUENCE { INTEGER version, SEQUENCE algorithm, OCTET STRING key }.
fn pkcs1_of_pkcs8(der: &[u8]) -> &[u8] {
    // (tag, content, rest) of the DER element at the start of `b`.
    fn element(b: &[u8]) -> (u8, &[u8], &[u8]) {
        let (tag, first) = (b[0], b[1]);
        let (len, head) = if first < 0x80 {
            (first as usize, 2)
        } else {
            let n = (first & 0x7f) as usize;
            let len = b[2..2 + n]
                .iter()
                .fold(0usize, |acc, x| acc << 8 | *x as usize);
            (len, 2 + n)
        };
        (tag, &b[head..head + len], &b[head + len..])
    }
    let (_, info, _) = element(der);
    let (_, _, rest) = element(info); // version
    let (_, _, rest) = element(rest); // algorithm
    let (tag, key, _) = element(rest);
    assert_eq!(tag, 0x04, "PKCS#8 key is an OCTET STRING");
    key
}

impl Signer {
    fn sign(&self, claims: Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.key).unwrap()
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(iss: &str) -> Value {
    json!({ "iss": iss, "sub": "alice", "aud": ["api", "web"], "exp": now() + 600,
            "groups": ["dev", "ops"], "org": { "team": "blue" }, "level": 3 })
}

fn rule(issuer: &str, jwks: &str) -> pb::JwtRule {
    pb::JwtRule {
        issuer: issuer.into(),
        jwks: jwks.into(),
        ..Default::default()
    }
}

fn policy(rules: Vec<pb::JwtRule>) -> JwtPolicy {
    JwtPolicy::from_proto(pb::RequestAuthentication {
        name: "jwt".into(),
        namespace: "ns".into(),
        targets: vec![pb::TargetRef {
            kind: "Gateway".into(),
            namespace: String::new(),
            name: "waypoint".into(),
        }],
        rules,
    })
    .unwrap()
}

fn bearer(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
    h
}

fn failed(o: Outcome) -> &'static str {
    match o {
        Outcome::Failed { message, .. } => message,
        other => panic!("expected a failure, got {other:?}"),
    }
}

const ISS: &str = "https://issuer.example";

#[test]
fn good_es256_token_verifies_and_is_removed() {
    let s = signer(Algorithm::ES256, "k1");
    let p = policy(vec![rule(ISS, &s.jwks)]);
    let mut h = bearer(&s.sign(claims(ISS)));
    let Outcome::Verified(v) = authenticate([&p], &mut h, None) else {
        panic!("not verified")
    };
    assert_eq!(v.principal, "https://issuer.example/alice");
    assert_eq!(v.claim_strings(&["groups".into()]), ["dev", "ops"]);
    assert_eq!(v.claim_strings(&["org".into(), "team".into()]), ["blue"]);
    assert_eq!(v.claim_strings(&["level".into()]), ["3"]);
    assert!(h.get(AUTHORIZATION).is_none(), "token not forwarded");
}

#[test]
fn rsa_families_verify() {
    for alg in [Algorithm::RS256, Algorithm::RS384, Algorithm::PS256] {
        let s = signer(alg, "r1");
        let p = policy(vec![rule(ISS, &s.jwks)]);
        let mut h = bearer(&s.sign(claims(ISS)));
        assert!(
            matches!(authenticate([&p], &mut h, None), Outcome::Verified(_)),
            "{alg:?}"
        );
    }
}

#[test]
fn no_token_passes_without_principal() {
    let s = signer(Algorithm::ES256, "k1");
    let p = policy(vec![rule(ISS, &s.jwks)]);
    let mut h = HeaderMap::new();
    assert!(matches!(
        authenticate([&p], &mut h, Some("a=b")),
        Outcome::NoToken
    ));
    // A non-Bearer Authorization header carries no token for the default location.
    h.insert(AUTHORIZATION, "Basic dXNlcjpwYXNz".parse().unwrap());
    assert!(matches!(authenticate([&p], &mut h, None), Outcome::NoToken));
}

#[test]
fn expired_wrong_issuer_wrong_key_and_garbage_fail() {
    let s = signer(Algorithm::ES256, "k1");
    let other = signer(Algorithm::ES256, "k1");
    let p = policy(vec![rule(ISS, &s.jwks)]);

    let mut expired = claims(ISS);
    expired["exp"] = json!(now() - 3600);
    assert_eq!(
        failed(authenticate([&p], &mut bearer(&s.sign(expired)), None)),
        "Jwt is expired"
    );
    // Within Envoy's 60 s clock skew a token still passes.
    let mut just = claims(ISS);
    just["exp"] = json!(now() - 30);
    assert!(matches!(
        authenticate([&p], &mut bearer(&s.sign(just)), None),
        Outcome::Verified(_)
    ));
    let mut early = claims(ISS);
    early["nbf"] = json!(now() + 3600);
    assert_eq!(
        failed(authenticate([&p], &mut bearer(&s.sign(early)), None)),
        "Jwt not yet valid"
    );
    assert_eq!(
        failed(authenticate(
            [&p],
            &mut bearer(&s.sign(claims("https://evil.example"))),
            None
        )),
        "Jwt issuer is not configured"
    );
    assert_eq!(
        failed(authenticate(
            [&p],
            &mut bearer(&other.sign(claims(ISS))),
            None
        )),
        "Jwt verification fails"
    );
    assert!(failed(authenticate([&p], &mut bearer("not-a-jwt"), None))
        .starts_with("Jwt is not in the form"));
}

#[test]
fn audiences_are_checked_when_listed() {
    let s = signer(Algorithm::ES256, "k1");
    let mut r = rule(ISS, &s.jwks);
    r.audiences = vec!["web".into()];
    let p = policy(vec![r.clone()]);
    assert!(matches!(
        authenticate([&p], &mut bearer(&s.sign(claims(ISS))), None),
        Outcome::Verified(_)
    ));
    r.audiences = vec!["billing".into()];
    let p = policy(vec![r]);
    assert_eq!(
        failed(authenticate([&p], &mut bearer(&s.sign(claims(ISS))), None)),
        "Audiences in Jwt are not allowed"
    );
}

#[test]
fn key_by_kid_or_any_key_of_the_family() {
    let a = signer(Algorithm::ES256, "a");
    let b = signer(Algorithm::ES256, "b");
    // One JWKS with both keys.
    let ka: Value = serde_json::from_str(&a.jwks).unwrap();
    let kb: Value = serde_json::from_str(&b.jwks).unwrap();
    let both = json!({ "keys": [ka["keys"][0], kb["keys"][0]] }).to_string();
    let p = policy(vec![rule(ISS, &both)]);
    assert!(matches!(
        authenticate([&p], &mut bearer(&b.sign(claims(ISS))), None),
        Outcome::Verified(_)
    ));
    // No kid in the token: every key is tried.
    let token = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims(ISS), &b.key).unwrap();
    assert!(matches!(
        authenticate([&p], &mut bearer(&token), None),
        Outcome::Verified(_)
    ));
    // A kid the JWKS does not have.
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some("zzz".into());
    let token = jsonwebtoken::encode(&h, &claims(ISS), &b.key).unwrap();
    assert_eq!(
        failed(authenticate([&p], &mut bearer(&token), None)),
        "Jwks doesn't have key to match kid or alg from Jwt"
    );
}

#[test]
fn no_keys_yet_rejects_the_issuers_tokens() {
    let s = signer(Algorithm::ES256, "k1");
    let mut r = rule(ISS, "");
    r.jwks_uri = "http://jwks.example/keys".into();
    let p = policy(vec![r]);
    assert_eq!(
        failed(authenticate([&p], &mut bearer(&s.sign(claims(ISS))), None)),
        "Jwks doesn't have key to match kid or alg from Jwt"
    );
}

#[test]
fn custom_locations_and_outputs() {
    let s = signer(Algorithm::ES256, "k1");
    let mut r = rule(ISS, &s.jwks);
    r.from_headers = vec![pb::JwtHeader {
        name: "X-Jwt".into(),
        prefix: "Token ".into(),
    }];
    r.from_params = vec!["jwt".into()];
    r.forward_original_token = true;
    r.output_payload_to_header = "x-jwt-payload".into();
    r.output_claim_to_headers = vec![pb::ClaimToHeader {
        header: "x-sub".into(),
        claim: "sub".into(),
    }];
    let p = policy(vec![r]);
    let token = s.sign(claims(ISS));

    let mut h = HeaderMap::new();
    h.insert("x-jwt", format!("Token {token}").parse().unwrap());
    assert!(matches!(
        authenticate([&p], &mut h, None),
        Outcome::Verified(_)
    ));
    assert!(h.contains_key("x-jwt"), "forwardOriginalToken keeps it");
    assert_eq!(h["x-sub"], "alice");
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(h["x-jwt-payload"].as_bytes())
        .unwrap();
    let payload: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(payload["sub"], "alice");

    let mut h = HeaderMap::new();
    let q = format!("a=1&jwt={token}");
    assert!(matches!(
        authenticate([&p], &mut h, Some(&q)),
        Outcome::Verified(_)
    ));

    // The default locations are not looked at once the rule names its own.
    assert!(matches!(
        authenticate([&p], &mut bearer(&token), None),
        Outcome::NoToken
    ));

    // A client's own output headers are dropped: without a token they are gone, with one they
    // hold the verified values only.
    let mut h = HeaderMap::new();
    h.insert("x-sub", "admin".parse().unwrap());
    h.insert("x-jwt-payload", "eyJzdWIiOiJhZG1pbiJ9".parse().unwrap());
    assert!(matches!(authenticate([&p], &mut h, None), Outcome::NoToken));
    assert!(
        !h.contains_key("x-sub") && !h.contains_key("x-jwt-payload"),
        "{h:?}"
    );
    let mut h = HeaderMap::new();
    h.append("x-sub", "admin".parse().unwrap());
    h.insert("x-jwt", format!("Token {token}").parse().unwrap());
    assert!(matches!(
        authenticate([&p], &mut h, None),
        Outcome::Verified(_)
    ));
    let subs: Vec<_> = h.get_all("x-sub").iter().collect();
    assert_eq!(subs, ["alice"]);
}

#[test]
fn bad_jwks_is_a_conversion_error_naming_the_field() {
    let e = JwtPolicy::from_proto(pb::RequestAuthentication {
        name: "jwt".into(),
        namespace: "ns".into(),
        targets: vec![],
        rules: vec![rule(ISS, "{\"nokeys\": 1}")],
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("ns/jwt") && e.contains("rules[0].jwks"), "{e}");
}
