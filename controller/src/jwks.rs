//! JWKS fetching, as istiod does it for RequestAuthentication `jwksUri`s: the controller (not
//! the waypoint) GETs every uri the policies name, keeps the last good document, refreshes it
//! periodically (istiod: every 20 minutes) and sooner after a failure, and hands the documents
//! to the translation (`translate::translate_with_jwks`), which puts them inline in each
//! `JwtRule.jwks`. A change of keys is a new translation input, so the publisher pushes it.
//!
//! A fetch has a time limit, follows no redirect, takes at most 1 MiB and must be a JSON object
//! with a `keys` array; anything else is a failure, which keeps the last good keys (a flapping
//! identity provider does not lock every user out) and retries after [`JwksSettings::retry`].
//!
//! [`spawn_fetcher`] is the controller's long-running form; [`fetch_all_blocking`] is one round
//! for callers without a runtime (the lab's file mode).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::manifests::Manifests;
use crate::translate::{jwks_uris, JwksDocuments};

/// Largest JWKS document accepted.
const MAX_BODY: usize = 1 << 20;

/// How the fetcher paces itself.
#[derive(Debug, Clone, Copy)]
pub struct JwksSettings {
    /// Time between two fetches of a uri that worked (istiod: 20 minutes).
    pub refresh: Duration,
    /// Time before a failed fetch is tried again.
    pub retry: Duration,
    /// Limit of one fetch, connection and body included.
    pub timeout: Duration,
}

impl Default for JwksSettings {
    fn default() -> Self {
        JwksSettings {
            refresh: Duration::from_secs(20 * 60),
            retry: Duration::from_secs(5),
            timeout: Duration::from_secs(5),
        }
    }
}

/// Why a JWKS fetch failed; the message names the uri.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("jwksUri {uri}: not an http(s) URL: {reason}")]
    BadUri { uri: String, reason: String },
    #[error("jwksUri {uri}: request failed: {reason} (is the issuer's key server reachable from the controller?)")]
    Request { uri: String, reason: String },
    #[error("jwksUri {uri}: no answer within {timeout:?}")]
    Timeout { uri: String, timeout: Duration },
    #[error("jwksUri {uri}: HTTP status {status}")]
    Status { uri: String, status: u16 },
    #[error("jwksUri {uri}: not a JWKS document: {reason}")]
    NotJwks { uri: String, reason: String },
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// An HTTP(S) client checking servers against the platform's roots, as kube does.
fn client() -> Result<HttpsClient, String> {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .try_with_platform_verifier()
        .map_err(|e| format!("TLS roots: {e}"))?
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector))
}

/// One GET of `uri`: the document, if it is a JWKS.
async fn fetch(client: &HttpsClient, uri: &str, timeout: Duration) -> Result<String, JwksError> {
    let parsed: hyper::Uri =
        uri.parse()
            .map_err(|e: hyper::http::uri::InvalidUri| JwksError::BadUri {
                uri: uri.to_owned(),
                reason: e.to_string(),
            })?;
    if !matches!(parsed.scheme_str(), Some("http" | "https")) {
        return Err(JwksError::BadUri {
            uri: uri.to_owned(),
            reason: "the scheme must be http or https".into(),
        });
    }
    let request = async {
        let resp = client.get(parsed).await.map_err(|e| JwksError::Request {
            uri: uri.to_owned(),
            reason: e.to_string(),
        })?;
        if !resp.status().is_success() {
            return Err(JwksError::Status {
                uri: uri.to_owned(),
                status: resp.status().as_u16(),
            });
        }
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| JwksError::Request {
                uri: uri.to_owned(),
                reason: format!("reading the body: {e}"),
            })?
            .to_bytes();
        check_jwks(uri, &body)
    };
    tokio::time::timeout(timeout, request)
        .await
        .map_err(|_| JwksError::Timeout {
            uri: uri.to_owned(),
            timeout,
        })?
}

/// The document as text, if it is a JSON object with a `keys` array.
fn check_jwks(uri: &str, body: &[u8]) -> Result<String, JwksError> {
    let not = |reason: String| JwksError::NotJwks {
        uri: uri.to_owned(),
        reason,
    };
    let text = std::str::from_utf8(body).map_err(|e| not(format!("not UTF-8: {e}")))?;
    let doc: serde_json::Value =
        serde_json::from_str(text).map_err(|e| not(format!("not JSON: {e}")))?;
    if !doc.get("keys").is_some_and(serde_json::Value::is_array) {
        return Err(not("no \"keys\" array".into()));
    }
    Ok(text.to_owned())
}

/// Fetches every uri once, concurrently: the documents that came, and the errors.
pub async fn fetch_all(uris: &[String], timeout: Duration) -> (JwksDocuments, Vec<JwksError>) {
    let mut docs = JwksDocuments::new();
    let mut errors = Vec::new();
    let client = match client() {
        Ok(c) => c,
        Err(reason) => {
            for uri in uris {
                errors.push(JwksError::Request {
                    uri: uri.clone(),
                    reason: reason.clone(),
                });
            }
            return (docs, errors);
        }
    };
    let results = futures::future::join_all(uris.iter().map(|u| fetch(&client, u, timeout))).await;
    for (uri, result) in uris.iter().zip(results) {
        match result {
            Ok(doc) => {
                docs.insert(uri.clone(), doc);
            }
            Err(e) => errors.push(e),
        }
    }
    (docs, errors)
}

/// [`fetch_all`] for callers without a runtime, on a thread of its own (so it is safe to call
/// from inside another runtime too).
pub fn fetch_all_blocking(uris: &[String], timeout: Duration) -> (JwksDocuments, Vec<JwksError>) {
    if uris.is_empty() {
        return (JwksDocuments::new(), Vec::new());
    }
    let uris = uris.to_vec();
    let run = move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        match rt {
            Ok(rt) => rt.block_on(fetch_all(&uris, timeout)),
            Err(e) => (
                JwksDocuments::new(),
                uris.iter()
                    .map(|u| JwksError::Request {
                        uri: u.clone(),
                        reason: format!("no runtime: {e}"),
                    })
                    .collect(),
            ),
        }
    };
    std::thread::spawn(run).join().unwrap_or_default()
}

/// Follows `manifests`' `jwksUri`s: fetches new ones at once, refreshes every
/// `settings.refresh`, retries failures after `settings.retry`, forgets uris no policy names.
/// The watch changes only when a document does. Ends when `manifests`' sender is dropped.
pub fn spawn_fetcher(
    mut manifests: watch::Receiver<Arc<Manifests>>,
    settings: JwksSettings,
) -> (watch::Receiver<Arc<JwksDocuments>>, JoinHandle<()>) {
    let (tx, rx) = watch::channel(Arc::new(JwksDocuments::new()));
    let task = tokio::spawn(async move {
        let client = match client() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("JWKS fetcher: {e}; jwksUri keys will not be fetched");
                return;
            }
        };
        // When each uri is due next.
        let mut due: BTreeMap<String, Instant> = BTreeMap::new();
        loop {
            let wanted = jwks_uris(&manifests.borrow_and_update());
            let now = Instant::now();
            due.retain(|u, _| wanted.contains(u));
            for u in &wanted {
                due.entry(u.clone()).or_insert(now);
            }
            let ready: Vec<String> = due
                .iter()
                .filter(|(_, at)| **at <= now)
                .map(|(u, _)| u.clone())
                .collect();
            let results = futures::future::join_all(
                ready.iter().map(|u| fetch(&client, u, settings.timeout)),
            )
            .await;
            let mut fetched = Vec::new();
            for (uri, result) in ready.into_iter().zip(results) {
                let next = match result {
                    Ok(doc) => {
                        fetched.push((uri.clone(), doc));
                        settings.refresh
                    }
                    Err(e) => {
                        tracing::warn!(
                            "{e}; keeping the last keys, retrying in {:?}",
                            settings.retry
                        );
                        settings.retry
                    }
                };
                due.insert(uri, Instant::now() + next);
            }
            tx.send_if_modified(|current| {
                let mut docs = (**current).clone();
                docs.retain(|u, _| wanted.contains(u));
                for (uri, doc) in fetched {
                    docs.insert(uri, doc);
                }
                if docs == **current {
                    return false;
                }
                tracing::info!(uris = docs.len(), "JWKS keys changed");
                *current = Arc::new(docs);
                true
            });
            let next = due.values().min().copied();
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = manifests.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                () = sleep => {}
            }
        }
    });
    (rx, task)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_jwks_documents_pass() {
        assert!(check_jwks("u", br#"{"keys":[]}"#).is_ok());
        let e = check_jwks("http://idp/keys", b"<html>")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("http://idp/keys") && e.contains("not JSON"),
            "{e}"
        );
        assert!(check_jwks("u", br#"{"keys":{}}"#).is_err());
    }
}
