//! The HTTP endpoints every amesh proxy serves, as Istio's proxies do: admin on 15000
//! (`/config_dump`, `/logging`, `/quitquitquit`), Prometheus on 15020 (`/metrics`,
//! `/stats/prometheus`, plus a read-only `/config_dump`) and readiness on 15021
//! (`/healthz/ready`).
//!
//! What the endpoints report comes from the binary through [`AdminSource`]; readiness is a
//! [`Readiness`] flag the binary sets, and `/quitquitquit` notifies a [`Notify`] the binary
//! waits on. Each endpoint serves at most [`MAX_CONNECTIONS`] clients at once (more wait in the
//! listen queue), and a client gets [`REQUEST_TIMEOUT`] to send its headers.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tracing::warn;

use crate::accept::AcceptLoop;
use crate::telemetry::LogReload;

/// What a proxy reports on its admin and Prometheus endpoints.
pub trait AdminSource: Send + Sync + 'static {
    /// Everything the proxy currently knows, for operators (`/config_dump`).
    fn config_dump(&self) -> impl Future<Output = serde_json::Value> + Send;
    /// Its metrics in Prometheus text exposition (`/metrics`, `/stats/prometheus`).
    fn metrics(&self) -> String;
}

/// Whether the proxy takes traffic (`/healthz/ready`): set once it has what it needs to
/// serve, cleared when it starts draining. Cheap to clone; clones share the flag.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// The admin endpoints of one proxy, shared by the three listeners.
pub struct Admin<S> {
    /// What `/config_dump` and `/metrics` report.
    pub source: S,
    /// Read by `/healthz/ready`.
    pub ready: Readiness,
    /// Changes the log filter (`/logging?level=`); `None` where the process cannot (tests).
    pub log_reload: Option<LogReload>,
    /// Notified by `/quitquitquit`; the binary drains when it fires.
    pub quit: Arc<Notify>,
}

/// Which set of routes a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// 15000: `/config_dump`, `/logging`, `/quitquitquit`.
    Admin,
    /// 15020: `/metrics`, `/stats/prometheus`, and `/config_dump` read-only.
    Stats,
    /// 15021: `/healthz/ready`.
    Readiness,
}

/// Connections one endpoint serves at once; more wait in the listen queue. Scrapers and
/// probes use one or two: this only stops a flood from taking the proxy's descriptors.
pub const MAX_CONNECTIONS: usize = 64;
/// A client gets this long to send its request headers, and six times as long in all.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds `addr` for `endpoint`; the error names both and the usual cause.
pub async fn bind(addr: SocketAddr, endpoint: Endpoint) -> anyhow::Result<TcpListener> {
    use anyhow::Context;
    TcpListener::bind(addr).await.with_context(|| {
        format!("binding the {endpoint:?} endpoint on {addr} (is another proxy running?)")
    })
}

/// Serves `endpoint` on `listener` for the life of the process: the admin endpoints keep
/// answering while the proxy drains (readiness must say "not ready", scrapers still scrape).
pub async fn serve<S: AdminSource>(
    listener: TcpListener,
    admin: Arc<Admin<S>>,
    endpoint: Endpoint,
) {
    AcceptLoop::new("admin")
        .max_connections(MAX_CONNECTIONS)
        .run(listener, move |stream, _peer| {
            Some(serve_conn(stream, admin.clone(), endpoint))
        })
        .await
}

/// One admin connection: HTTP/1.1 with the header timeout, closed after a minute whatever
/// it does, so a client cannot hold one of the few slots forever.
async fn serve_conn<S: AdminSource>(stream: TcpStream, admin: Arc<Admin<S>>, endpoint: Endpoint) {
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

async fn route<S: AdminSource, B>(
    admin: &Admin<S>,
    endpoint: Endpoint,
    req: Request<B>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    match (endpoint, req.method(), path) {
        (Endpoint::Readiness, _, "/healthz/ready") => {
            if admin.ready.is_ready() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        (Endpoint::Stats, &Method::GET, "/metrics" | "/stats/prometheus") => {
            let mut r = text(StatusCode::OK, admin.source.metrics());
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        // Also on the stats port, read-only, for what can reach a pod's address but not its
        // loopback (a Kubernetes API server's pod proxy, for `amesh config`): the dump holds
        // config, public certificates and pod names, never a private key. Nothing that changes
        // the proxy (`/logging`, `/quitquitquit`) is served there.
        (Endpoint::Admin | Endpoint::Stats, &Method::GET, "/config_dump") => {
            json(&admin.source.config_dump().await)
        }
        (Endpoint::Admin, _, "/logging") => logging(admin, req.uri().query()),
        (Endpoint::Admin, &Method::POST, "/quitquitquit") => {
            admin.quit.notify_one();
            text(StatusCode::OK, "draining\n")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// How `/logging` is used, sent with every answer that is not a success.
const LOGGING_HELP: &str = "usage: /logging                         the filter in force
       /logging?level=<level>          every target at <level>
       /logging?level=<target>:<level>[,<target>:<level>...]   some targets (access: the access log)
       /logging?reset                  back to the filter the process started with
       (reset and level combine: level applies to the filter the process started with)
levels: off, error, warn, info, debug, trace
";

/// `/logging`: istioctl's syntax (`level=access:debug`, `level=debug`, `reset`); with neither,
/// the filter in force. A parameter it does not know or a bad level is a 400 naming it.
fn logging<S>(admin: &Admin<S>, query: Option<&str>) -> Response<Full<Bytes>> {
    let mut level = None;
    let mut reset = false;
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*key {
            "level" => level = Some(value.into_owned()),
            "reset" => reset = true,
            other => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("unknown parameter {other:?}\n{LOGGING_HELP}"),
                )
            }
        }
    }
    let Some(reload) = &admin.log_reload else {
        return text(
            StatusCode::NOT_IMPLEMENTED,
            "log level cannot be changed in this process\n",
        );
    };
    if level.is_none() && !reset {
        return text(
            StatusCode::OK,
            format!("current log level is {}\n", reload.current()),
        );
    }
    match reload.change(level.as_deref().unwrap_or(""), reset) {
        Ok(now) => text(StatusCode::OK, format!("current log level is {now}\n")),
        Err(e) => text(
            StatusCode::BAD_REQUEST,
            format!("invalid level: {e}\n{LOGGING_HELP}"),
        ),
    }
}

/// A time as RFC 3339 in UTC, or as seconds since the epoch if it cannot be formatted.
pub fn rfc3339(t: std::time::SystemTime) -> String {
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

mod certs;
pub use certs::{cert as cert_dump, certificates, CertDump, CertsDump};

#[cfg(test)]
mod tests;
