//! `amesh explain` against the real data path: one lab with bookinfo (its STRICT
//! PeerAuthentication, L4 and L7 AuthorizationPolicies, waypoint and HTTPRoute) plus a DENY
//! policy (fixtures/explain). For each case the real `amesh` binary explains, the same
//! connection or request is made from the source pod, and the two must agree: allowed ↔ the
//! app answers; denied ↔ the connection is refused or reset, or the waypoint answers 403; the
//! route and backend explain names are the ones the request reaches.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use e2e::http::{request, Req};
use e2e::{addr, wait_for, MeshLab};
use serde_json::Value;

/// `amesh --lab <id> explain <args> -o json`, parsed; panics with stderr when it fails.
fn explain(mesh: &MeshLab, args: &[&str]) -> Value {
    let out = Command::new(e2e::amesh_binary())
        .args(["--lab", &mesh.lab.state().id.to_string(), "explain"])
        .args(args)
        .args(["-o", "json"])
        .output()
        .expect("run amesh");
    assert!(
        out.status.success(),
        "amesh explain {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("explain's JSON")
}

/// The text form, for the failure messages and one check of the readable output.
fn explain_text(mesh: &MeshLab, args: &[&str]) -> (bool, String) {
    let out = Command::new(e2e::amesh_binary())
        .args(["--lab", &mesh.lab.state().id.to_string(), "explain"])
        .args(args)
        .output()
        .expect("run amesh");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn verdict(e: &Value) -> &str {
    e["verdict"].as_str().unwrap_or_default()
}

/// What the real data path did with a plain HTTP GET from `from` to `to`: the app's answer
/// (its pod name), or the error.
fn real_get(mesh: &MeshLab, from: &str, to: SocketAddr) -> Result<String, String> {
    match request(&mesh.lab, from, to, Req::get("/")) {
        Ok(r) if r.status == 200 => Ok(r.echo().map(|e| e.pod).unwrap_or_default()),
        Ok(r) => Err(format!("status {}", r.status)),
        Err(e) => Err(e),
    }
}

#[test]
fn explain_agrees_with_the_data_path() {
    let mesh = MeshLab::up_example("bookinfo", 2);

    let (productpage, _) = mesh.pod_prefixed("productpage");
    let (_, details_ip) = mesh.pod_prefixed("details");
    let (_, reviews_v1_ip) = mesh.pod_prefixed("reviews-v1");
    let (reviews_v2, _) = mesh.pod_prefixed("reviews-v2");
    let (_, curl_ip) = mesh.pod_prefixed("curl");
    let src = format!("bookinfo/{productpage}");
    let details = addr(details_ip, 9080);
    let reviews_v1 = addr(reviews_v1_ip, 9080);

    // 1. Allowed, HBONE straight to a pod: details has no ALLOW policy, and productpage has
    //    an identity (STRICT is satisfied).
    wait_for(
        "productpage reaches details",
        Duration::from_secs(10),
        || real_get(&mesh, &productpage, details).is_ok(),
    );
    let e = explain(&mesh, &[&src, &details.to_string()]);
    assert_eq!(e["route"]["kind"], "hbone", "{e:#}");
    assert_eq!(verdict(&e), "allowed", "{e:#}");
    assert_eq!(
        e["inbound"]["decision"]["reason"], "NoAllowPolicies",
        "{e:#}"
    );
    let answered = real_get(&mesh, &productpage, details);
    assert!(
        answered.as_deref().is_ok_and(|p| p.starts_with("details")),
        "{answered:?}"
    );
    let (ok, text) = explain_text(&mesh, &[&src, &details.to_string()]);
    assert!(ok && text.contains("Verdict:     ALLOWED"), "{text}");

    // 2. Denied by STRICT: curl (legacy namespace, not captured) has no identity.
    let e = explain(&mesh, &["legacy/curl", &details.to_string()]);
    assert_eq!(e["route"]["kind"], "uncaptured", "{e:#}");
    assert_eq!(verdict(&e), "denied", "{e:#}");
    assert_eq!(
        e["inbound"]["decision"]["policy"], "istio-system/istio_converted_static_strict",
        "{e:#}"
    );
    let real = real_get(&mesh, "curl", details);
    assert!(
        real.is_err(),
        "STRICT must refuse curl's plaintext: {real:?}"
    );

    // 3. Denied by a DENY policy (productpage calling a reviews pod directly); the same call
    //    from reviews-v2 is allowed both ways.
    e2e::lab::mesh::apply(
        &mesh.lab,
        "explain-deny",
        &std::fs::read_to_string(e2e::fixture("explain").join("deny.yaml")).expect("fixture"),
    )
    .expect("apply the DENY policy");
    wait_for(
        "the DENY policy takes effect",
        Duration::from_secs(10),
        || real_get(&mesh, &productpage, reviews_v1).is_err(),
    );
    let e = explain(&mesh, &[&src, &reviews_v1.to_string()]);
    assert_eq!(verdict(&e), "denied", "{e:#}");
    assert_eq!(
        e["inbound"]["decision"]["policy"], "bookinfo/reviews-no-direct-productpage",
        "{e:#}"
    );
    assert_eq!(e["inbound"]["decision"]["rule"], 0, "{e:#}");
    let e = explain(
        &mesh,
        &[&format!("bookinfo/{reviews_v2}"), &reviews_v1.to_string()],
    );
    assert_eq!(verdict(&e), "allowed", "{e:#}");
    assert!(real_get(&mesh, &reviews_v2, reviews_v1).is_ok());
    // The named policy is the one that decides: without it the same call is allowed.
    e2e::lab::mesh::remove(&mesh.lab, "explain-deny").expect("remove the DENY policy");
    wait_for("the DENY policy is gone", Duration::from_secs(10), || {
        real_get(&mesh, &productpage, reviews_v1).is_ok()
    });
    let e = explain(&mesh, &[&src, &reviews_v1.to_string()]);
    assert_eq!(verdict(&e), "allowed", "{e:#}");

    // 4. Through the waypoint, HTTP: jason's request takes the reviews route's rule 0 to
    //    reviews-v2; a POST is denied by reviews-viewer (GET only); productpage calling
    //    ratings is denied at the waypoint (only reviews may).
    let reviews = addr(mesh.vip("reviews"), 9080);
    let e = explain(
        &mesh,
        &[
            &src,
            "reviews.bookinfo:9080",
            "--http",
            "GET",
            "/",
            "--header",
            "end-user=jason",
        ],
    );
    assert_eq!(e["route"]["kind"], "waypoint", "{e:#}");
    assert_eq!(verdict(&e), "allowed", "{e:#}");
    assert_eq!(e["http"]["route"], "bookinfo/reviews", "{e:#}");
    assert_eq!(e["http"]["rule"], 0, "{e:#}");
    let backends = e["http"]["backends"].as_array().expect("backends");
    assert_eq!(backends.len(), 1, "{e:#}");
    assert!(
        backends[0]
            .as_str()
            .is_some_and(|b| b.starts_with("bookinfo/reviews-v2.")),
        "{e:#}"
    );
    let real = request(
        &mesh.lab,
        &productpage,
        reviews,
        Req::get("/").header("end-user", "jason"),
    )
    .expect("jason's request");
    assert_eq!(real.status, 200, "{}", real.body);
    assert_eq!(real.echo().expect("echo reply").version, "v2");

    let e = explain(
        &mesh,
        &[&src, "reviews.bookinfo:9080", "--http", "POST", "/"],
    );
    assert_eq!(verdict(&e), "denied", "{e:#}");
    assert_eq!(e["http"]["decision"], "denied", "{e:#}");
    let policies = e["http"]["policies"].as_array().expect("policies");
    assert!(
        policies
            .iter()
            .any(|p| p["policy"] == "bookinfo/reviews-viewer" && p["matches"] == false),
        "{e:#}"
    );
    let real = request(
        &mesh.lab,
        &productpage,
        reviews,
        Req::get("/").method("POST"),
    )
    .expect("the POST gets an answer");
    assert_eq!(real.status, 403, "{}", real.body);

    let ratings = addr(mesh.vip("ratings"), 9080);
    let e = explain(
        &mesh,
        &[&src, "ratings.bookinfo:9080", "--http", "GET", "/"],
    );
    assert_eq!(verdict(&e), "denied", "{e:#}");
    let real = request(&mesh.lab, &productpage, ratings, Req::get("/")).expect("an answer");
    assert_eq!(real.status, 403, "{}", real.body);

    // 5. Out of the mesh: curl's pod is not captured, so productpage's connection is not
    //    tunnelled and nothing authorizes it.
    let curl = addr(curl_ip, 8080);
    let e = explain(&mesh, &[&src, &curl.to_string()]);
    let kind = e["route"]["kind"].as_str().unwrap_or_default().to_string();
    assert!(kind == "plain" || kind == "passthrough", "{e:#}");
    assert_eq!(verdict(&e), "allowed", "{e:#}");
    assert!(e.get("inbound").is_none(), "{e:#}");
    let real = real_get(&mesh, &productpage, curl);
    assert!(real.as_deref().is_ok_and(|p| p == "curl"), "{real:?}");

    // Errors name what is missing.
    let (ok, text) = explain_text(&mesh, &["bookinfo/nope", "reviews.bookinfo:9080"]);
    assert!(
        !ok && text.contains("pod \"bookinfo/nope\" not found"),
        "{text}"
    );
    let (ok, text) = explain_text(&mesh, &[&src, "reviews.bookinfo:1234"]);
    assert!(!ok && text.contains("has no port 1234"), "{text}");
    let (ok, text) = explain_text(&mesh, &[&src, "nowhere:80"]);
    assert!(
        !ok && text.contains("no service named \"nowhere\""),
        "{text}"
    );
}
