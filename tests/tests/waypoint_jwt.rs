//! Request authentication and local rate limiting at the waypoint, end to end
//! (`tests/fixtures/waypoint_jwt`): a RequestAuthentication whose keys the control plane
//! fetches from a key server pod (`jwksUri`), an AuthorizationPolicy requiring a request
//! principal (and a claim for `/admin`), and an HTTPLocalRateLimitPolicy of 10 requests per
//! second on another Service.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use e2e::http::{keepalive, request, Req};
use e2e::{addr, fixture, metric_sum, wait_for, MeshLab};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const ISSUER: &str = "https://issuer.amesh.test";

/// An ES256 key made for the run, and its public JWKS.
struct Keys {
    key: EncodingKey,
    jwks: String,
}

fn keys() -> Keys {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let key = EncodingKey::from_ec_der(&pair.serialize_der());
    let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256).unwrap();
    jwk.common.key_id = Some("e2e".into());
    Keys {
        key,
        jwks: json!({ "keys": [jwk] }).to_string(),
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

impl Keys {
    fn token(&self, iss: &str, exp: u64, groups: &[&str]) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("e2e".into());
        let claims: Value = json!({ "iss": iss, "sub": "alice", "exp": exp, "groups": groups });
        jsonwebtoken::encode(&header, &claims, &self.key).unwrap()
    }
}

/// The fixture with the run's JWKS in place, in a folder of its own that is removed when the
/// returned handle drops (hold it for the whole test: the lab reads the folder while it runs).
fn fixture_with(jwks: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("amesh-e2e-jwt-")
        .tempdir()
        .unwrap();
    let text = std::fs::read_to_string(fixture("waypoint_jwt").join("cluster.yaml")).unwrap();
    std::fs::write(
        dir.path().join("cluster.yaml"),
        text.replace("__JWKS__", jwks),
    )
    .unwrap();
    dir
}

fn policies(jwks_uri: &str) -> String {
    format!(
        r#"apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: shop}}
spec:
  targetRefs: [{{kind: Service, group: "", name: web}}]
  jwtRules:
    - issuer: {ISSUER}
      jwksUri: {jwks_uri}
      outputClaimToHeaders: [{{header: x-jwt-sub, claim: sub}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: require-jwt, namespace: shop}}
spec:
  targetRefs: [{{kind: Service, group: "", name: web}}]
  rules:
    - from: [{{source: {{requestPrincipals: ["{ISSUER}/*"]}}}}]
      to: [{{operation: {{notPaths: ["/admin*"]}}}}]
    - from: [{{source: {{requestPrincipals: ["{ISSUER}/*"]}}}}]
      to: [{{operation: {{paths: ["/admin*"]}}}}]
      when: [{{key: "request.auth.claims[groups]", values: [admin]}}]
---
apiVersion: policy.amesh.io/v1alpha1
kind: HTTPLocalRateLimitPolicy
metadata: {{name: ten-per-second, namespace: shop}}
spec:
  targetRef: {{kind: Service, name: limited}}
  total: {{requestsPerSecond: 10}}
"#
    )
}

fn get(m: &MeshLab, to: std::net::SocketAddr, path: &str, token: Option<&str>) -> e2e::http::Resp {
    let mut req = Req::get(path);
    if let Some(t) = token {
        req = req.header("authorization", &format!("Bearer {t}"));
    }
    request(&m.lab, "client", to, req).unwrap()
}

#[test]
fn waypoint_jwt_and_rate_limit() {
    let keys = keys();
    let fixture_dir = fixture_with(&keys.jwks);
    let m = MeshLab::up_dir(fixture_dir.path(), 2);
    let web = addr(m.vip("web"), 80);
    let limited = addr(m.vip("limited"), 80);
    let jwks_uri = format!("http://{}/jwks.json", addr(m.ip("jwks-1"), 8080));

    let good = keys.token(ISSUER, now() + 3600, &["dev"]);
    let admin = keys.token(ISSUER, now() + 3600, &["dev", "admin"]);
    let expired = keys.token(ISSUER, now() - 3600, &["dev"]);
    let stranger = keys.token("https://evil.example", now() + 3600, &["admin"]);

    // The policies reach the waypoint (no token: 403), and the keys once the control plane
    // has fetched them (a good token: 200).
    m.apply_and_wait(
        "jwt",
        &policies(&jwks_uri),
        "the policies and the fetched keys in force",
        || get(&m, web, "/", None).status == 403 && get(&m, web, "/", Some(&good)).status == 200,
    );

    // Verified: the token is not forwarded, the claim header is.
    let r = get(&m, web, "/", Some(&good));
    let echo = r.echo().expect("echo reply");
    assert!(
        !echo.headers.contains_key("authorization"),
        "{:?}",
        echo.headers
    );
    assert_eq!(
        echo.headers.get("x-jwt-sub").map(String::as_str),
        Some("alice")
    );

    // No token: no request principal, so the policy denies (403). A bad token: 401.
    let r = get(&m, web, "/", None);
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.body, "RBAC: access denied");
    let r = get(&m, web, "/", Some(&expired));
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(r.body, "Jwt is expired");
    assert!(
        r.headers
            .iter()
            .any(|(k, v)| k == "www-authenticate" && v.starts_with("Bearer realm=")),
        "{:?}",
        r.headers
    );
    let r = get(&m, web, "/", Some(&stranger));
    assert_eq!(r.status, 401, "{r:?}");
    let r = get(&m, web, "/", Some("not.a.jwt"));
    assert_eq!(r.status, 401, "{r:?}");

    // The claim condition: /admin needs groups to contain "admin".
    assert_eq!(get(&m, web, "/admin", Some(&good)).status, 403);
    assert_eq!(get(&m, web, "/admin", Some(&admin)).status, 200);

    // Rate limit: 10 per second, a burst of one second's worth. 100 requests as fast as one
    // connection goes: most are refused, and at least the burst passes.
    wait_for(
        "the rate limit reaches the waypoint",
        Duration::from_secs(10),
        || {
            let burst = keepalive(&m.lab, "client", limited, vec![Req::get("/"); 30]).unwrap();
            burst.iter().any(|r| r.status == 429)
        },
    );
    std::thread::sleep(Duration::from_millis(1100)); // the bucket refills
    let started = std::time::Instant::now();
    let burst = keepalive(&m.lab, "client", limited, vec![Req::get("/"); 100]).unwrap();
    let took = started.elapsed();
    let accepted = burst.iter().filter(|r| r.status == 200).count();
    let limited_n = burst.iter().filter(|r| r.status == 429).count();
    assert_eq!(accepted + limited_n, 100, "only 200 and 429 expected");
    assert!(accepted >= 10, "accepted {accepted} in {took:?}");
    // At 10 per second, 100 requests in under 6 s leave at least 30 refused; in practice
    // the burst takes well under a second and about 88 are refused.
    if took < Duration::from_secs(2) {
        assert!(limited_n >= 70, "only {limited_n} refused in {took:?}");
    } else {
        assert!(
            accepted <= 10 + 10 * (took.as_secs() as usize + 1),
            "{accepted} in {took:?}"
        );
    }
    let refused = burst.iter().find(|r| r.status == 429).unwrap();
    assert_eq!(refused.body, "local_rate_limited");
    // Counted in istio_requests_total with Envoy's flag.
    let metrics = m.waypoint_metrics("shop", "waypoint");
    let rl = metric_sum(
        &metrics,
        "istio_requests_total",
        &["response_code=\"429\"", "response_flags=\"RL\""],
    );
    assert!(rl >= limited_n as f64, "{rl} < {limited_n}");
    // The other Service is not limited.
    let others = keepalive(
        &m.lab,
        "client",
        web,
        vec![Req::get("/").header("authorization", &format!("Bearer {good}")); 30],
    )
    .unwrap();
    assert!(others.iter().all(|r| r.status == 200));
}
