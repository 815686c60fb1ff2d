//! ztunnel's HTTP endpoints: admin on 15000 (`/config_dump`, `/logging`, `/quitquitquit`),
//! Prometheus on 15020 (`/metrics`, `/stats/prometheus`), readiness on 15021
//! (`/healthz/ready`).

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tracing::warn;

use crate::pods::PodManager;
use crate::proxy::Shared;

/// Changes the log filter at runtime (`/logging?level=debug`).
pub type LogReload = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

pub struct Admin {
    pub shared: Arc<Shared>,
    pub pods: Arc<PodManager>,
    /// Set once pods are restored and config has synced; cleared when draining.
    pub ready: Arc<AtomicBool>,
    pub log_reload: Option<LogReload>,
    /// Notified by `/quitquitquit`.
    pub quit: Arc<Notify>,
}

/// Which set of routes a listener serves.
#[derive(Clone, Copy, Debug)]
pub enum Endpoint {
    Admin,
    Stats,
    Readiness,
}

/// Connections one endpoint serves at once; more wait in the listen queue. Scrapers and
/// probes use one or two: this only stops a flood from taking ztunnel's descriptors.
const MAX_CONNECTIONS: usize = 64;
/// A client gets this long to send its request headers, and as long again per response.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub async fn serve(listener: TcpListener, admin: Arc<Admin>, endpoint: Endpoint) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        // Wait for a free slot before accepting: backpressure, not refusal.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                warn!(?endpoint, error = %e, "accepting an admin connection failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(route(&admin, endpoint, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(REQUEST_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(REQUEST_TIMEOUT * 6, conn).await {
                Ok(Err(e)) => warn!(error = %e, "admin connection failed"),
                Err(_) => warn!("admin connection open for over a minute; closing it"),
                Ok(Ok(())) => {}
            }
            drop(slot);
        });
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

fn json(value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = text(
        StatusCode::OK,
        serde_json::to_vec_pretty(value).unwrap_or_default(),
    );
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

async fn route(admin: &Admin, endpoint: Endpoint, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    match (endpoint, req.method(), path) {
        (Endpoint::Readiness, _, "/healthz/ready") => {
            if admin.ready.load(Ordering::Acquire) {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        (Endpoint::Stats, &Method::GET, "/metrics" | "/stats/prometheus") => {
            let mut r = text(StatusCode::OK, admin.shared.metrics.encode());
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        (Endpoint::Admin, &Method::GET, "/config_dump") => json(&config_dump(admin).await),
        (Endpoint::Admin, _, "/logging") => {
            let level = req.uri().query().and_then(|q| {
                q.split('&')
                    .find_map(|kv| kv.strip_prefix("level="))
                    .map(str::to_string)
            });
            match (level, &admin.log_reload) {
                (None, _) => text(
                    StatusCode::OK,
                    "use /logging?level=<filter>, e.g. level=debug or level=info,access=debug\n",
                ),
                (Some(_), None) => text(
                    StatusCode::NOT_IMPLEMENTED,
                    "log level cannot be changed in this process\n",
                ),
                (Some(l), Some(reload)) => match reload(&l) {
                    Ok(()) => text(StatusCode::OK, format!("log level set to {l}\n")),
                    Err(e) => text(
                        StatusCode::BAD_REQUEST,
                        format!("invalid level {l:?}: {e}\n"),
                    ),
                },
            }
        }
        (Endpoint::Admin, &Method::POST, "/quitquitquit") => {
            admin.quit.notify_one();
            text(StatusCode::OK, "draining\n")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Everything ztunnel currently knows, for operators: config, captured pods, certificates.
async fn config_dump(admin: &Admin) -> serde_json::Value {
    let snapshot = admin.shared.state.snapshot();
    let certs: Vec<_> = admin
        .shared
        .tls
        .store()
        .list()
        .into_iter()
        .map(|c| {
            serde_json::json!({
                "identity": c.identity.to_string(),
                "serial": c.serial,
                "notBefore": humantime(c.not_before),
                "notAfter": humantime(c.not_after),
            })
        })
        .collect();
    serde_json::json!({
        "config": crate::dump::snapshot(&snapshot),
        "pods": admin.pods.list().await,
        "certificates": certs,
    })
}

fn humantime(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| secs.to_string())
}
