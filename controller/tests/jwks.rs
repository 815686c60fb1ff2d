//! The controller's JWKS fetcher against a real HTTP server on loopback: keys of a `jwksUri`
//! reach the translation (and a waypoint's local file), a change of keys on the server is
//! picked up at the next refresh and republished, a failing server keeps the last keys, and a
//! policy that goes away stops its fetches.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use controller::jwks::{fetch_all_blocking, spawn_fetcher, JwksSettings};
use controller::manifests::{load_yaml, Manifests};
use controller::translate::{l7_local_config, translate_with_jwks};
use controller::TranslateOptions;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use tokio::sync::watch;

/// Serves `doc` (status 200) or, when it is empty, 503, on every path.
async fn server(doc: watch::Receiver<String>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (io, _) = listener.accept().await.unwrap();
            let doc = doc.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req| {
                    let body = doc.borrow().clone();
                    async move {
                        let mut resp = Response::new(Full::new(Bytes::from(body.clone())));
                        if body.is_empty() {
                            *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                        }
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
                    .await;
            });
        }
    });
    addr
}

fn manifests(uri: &str, with_policy: bool) -> Manifests {
    let mut yaml = String::from(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels:\n    \
         istio.io/dataplane-mode: ambient\n    istio.io/use-waypoint: waypoint\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: waypoint, namespace: shop}\n\
         spec:\n  gatewayClassName: istio-waypoint\n  listeners: [{name: mesh, port: 15008, protocol: HBONE}]\n",
    );
    if with_policy {
        yaml.push_str(&format!(
            "---\napiVersion: security.istio.io/v1\nkind: RequestAuthentication\n\
             metadata: {{name: jwt, namespace: shop}}\nspec:\n  targetRefs:\n  - \
             {{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}}\n  \
             jwtRules:\n  - {{issuer: https://idp.example, jwksUri: \"{uri}\"}}\n"
        ));
    }
    let loaded = load_yaml("jwt.yaml", &yaml);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    loaded.manifests
}

const KEYS_A: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"a","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;
const KEYS_B: &str = r#"{"keys":[]}"#;

async fn wait_for_doc(
    rx: &mut watch::Receiver<Arc<controller::translate::JwksDocuments>>,
    uri: &str,
    want: Option<&str>,
) {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if rx.borrow_and_update().get(uri).map(String::as_str) == want {
                return;
            }
            rx.changed().await.expect("fetcher alive");
        }
    })
    .await
    .unwrap_or_else(|_| panic!("keys of {uri} never became {want:?}"));
}

#[tokio::test]
async fn fetched_keys_follow_the_server_and_reach_the_translation() {
    let (doc_tx, doc_rx) = watch::channel(KEYS_A.to_owned());
    let addr = server(doc_rx).await;
    let uri = format!("http://{addr}/.well-known/jwks.json");
    let (m_tx, m_rx) = watch::channel(Arc::new(manifests(&uri, true)));
    let settings = JwksSettings {
        refresh: Duration::from_millis(300),
        retry: Duration::from_millis(100),
        timeout: Duration::from_secs(2),
    };
    let (mut keys, task) = spawn_fetcher(m_rx, settings);
    wait_for_doc(&mut keys, &uri, Some(KEYS_A)).await;

    // The translation puts the fetched document inline; the lab's file gets it too.
    let docs = keys.borrow().clone();
    let t = translate_with_jwks(&m_tx.borrow(), &TranslateOptions::default(), &docs);
    let rule = &t.request_authentications[0].resource.rules[0];
    assert_eq!(rule.jwks, KEYS_A);
    assert_eq!(rule.jwks_uri, uri);
    assert!(
        t.warnings.iter().all(|w| !w.contains("not been fetched")),
        "{:?}",
        t.warnings
    );
    let local = l7_local_config(&t, "shop", "waypoint");
    assert_eq!(local.authentications.len(), 1);

    // A failing server keeps the last good keys; new keys arrive at the next refresh.
    doc_tx.send_replace(String::new());
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(keys.borrow().get(&uri).map(String::as_str), Some(KEYS_A));
    doc_tx.send_replace(KEYS_B.to_owned());
    wait_for_doc(&mut keys, &uri, Some(KEYS_B)).await;

    // The policy goes away: its keys are forgotten.
    m_tx.send_replace(Arc::new(manifests(&uri, false)));
    wait_for_doc(&mut keys, &uri, None).await;

    // Without a controller runtime (the lab's file mode): one round, errors named.
    // (Off the test's runtime thread, which serves the keys.)
    let uris = [uri.clone(), "http://127.0.0.1:1/none".to_owned()];
    let (docs, errors) =
        tokio::task::spawn_blocking(move || fetch_all_blocking(&uris, Duration::from_secs(2)))
            .await
            .unwrap();
    assert_eq!(docs.get(&uri).map(String::as_str), Some(KEYS_B));
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].to_string().contains("127.0.0.1:1"),
        "{}",
        errors[0]
    );
    task.abort();
}
