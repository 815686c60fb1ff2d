//! The controller's read-only debug listener (`--debug-addr`; istiod serves its debug
//! endpoints on 15014): what `amesh status` reports about the control plane.
//!
//! - `GET /debug/status`: version, readiness, the config version (a digest of every resource
//!   served), resources per type, every connected xDS client with what it was sent and ACKed,
//!   and the CA root's validity.
//! - `GET /debug/connections`: the connected xDS clients alone.
//! - `GET /ready`: 200 once the CA is loaded and the first config is published, else 503.
//!
//! Nothing here is secret: node ids, counts, nonces, versions and the CA's *public* root
//! certificate. No private key, token or resource content is served, and nothing can be
//! changed (every other method or path is a 404).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::xds::session::SessionStatus;
use crate::xds::ResourceSet;

/// The xDS streams open now, each with its latest [`SessionStatus`]. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Clients {
    inner: Arc<Mutex<BTreeMap<u64, ClientEntry>>>,
    next: Arc<AtomicU64>,
}

#[derive(Debug, Clone)]
struct ClientEntry {
    peer: String,
    connected: SystemTime,
    status: Option<SessionStatus>,
}

/// One stream's place in [`Clients`]; removed when dropped (the stream ended).
#[derive(Debug)]
pub struct Registration {
    clients: Clients,
    id: u64,
}

impl Clients {
    /// Registers a stream from `peer`.
    pub fn register(&self, peer: &str) -> Registration {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.inner.lock().insert(
            id,
            ClientEntry {
                peer: peer.to_string(),
                connected: SystemTime::now(),
                status: None,
            },
        );
        Registration {
            clients: self.clone(),
            id,
        }
    }

    /// The clients as the debug page shows them, by connection order.
    pub fn to_json(&self) -> Vec<Value> {
        self.inner
            .lock()
            .values()
            .map(|e| {
                let mut v = match &e.status {
                    Some(s) => serde_json::to_value(s).unwrap_or_default(),
                    // Connected, no request read yet.
                    None => json!({}),
                };
                if let Some(obj) = v.as_object_mut() {
                    obj.insert("peer".into(), e.peer.clone().into());
                    obj.insert(
                        "connectedAt".into(),
                        mesh::admin::rfc3339(e.connected).into(),
                    );
                }
                v
            })
            .collect()
    }
}

impl Registration {
    /// Records the stream's state after a request or a push.
    pub fn update(&self, status: SessionStatus) {
        if let Some(e) = self.clients.inner.lock().get_mut(&self.id) {
            e.status = Some(status);
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.clients.inner.lock().remove(&self.id);
    }
}

/// What the debug page reads; filled in as the controller starts.
#[derive(Debug, Default)]
pub struct DebugState {
    ready: AtomicBool,
    /// The CA root's facts (public certificate only) and trust domain.
    ca: OnceLock<Value>,
    resources: OnceLock<watch::Receiver<Arc<ResourceSet>>>,
    clients: OnceLock<Clients>,
}

impl DebugState {
    pub fn set_ca(&self, ca: &mesh::certs::LocalCa) {
        let root = mesh::admin::cert_dump(&ca.root_der());
        let _ = self.ca.set(json!({
            "trustDomain": ca.trust_domain(),
            "root": {
                "serialNumber": root.serial_number,
                "validFrom": root.valid_from,
                "expirationTime": root.expiration_time,
            },
        }));
    }

    pub fn set_resources(&self, resources: watch::Receiver<Arc<ResourceSet>>) {
        let _ = self.resources.set(resources);
    }

    pub fn set_clients(&self, clients: Clients) {
        let _ = self.clients.set(clients);
    }

    /// Serving: the CA is loaded and the first translation published.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    fn clients(&self) -> Vec<Value> {
        self.clients.get().map(Clients::to_json).unwrap_or_default()
    }

    /// `/debug/status`.
    pub fn status(&self) -> Value {
        let set = self.resources.get().map(|rx| rx.borrow().clone());
        json!({
            "component": "amesh-controller",
            "version": env!("CARGO_PKG_VERSION"),
            "ready": self.is_ready(),
            "configVersion": set.as_ref().map(|s| s.digest()),
            "resources": set.as_ref().map(|s| s.counts()),
            "ca": self.ca.get(),
            "clients": self.clients(),
        })
    }
}

/// Serves the debug endpoints on `listener` until the task is aborted.
pub fn spawn(listener: TcpListener, state: Arc<DebugState>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(crate::page_server::serve(
        listener,
        "debug listener",
        move |req| answer(&state, req),
    ))
}

fn answer<B>(state: &DebugState, req: &Request<B>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return reply(StatusCode::NOT_FOUND, "text/plain", "not found\n");
    }
    match req.uri().path() {
        "/debug/status" => json_reply(&state.status()),
        "/debug/connections" => json_reply(&Value::Array(state.clients())),
        "/ready" if state.is_ready() => reply(StatusCode::OK, "text/plain", "ready\n"),
        "/ready" => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n"),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found (try /debug/status, /debug/connections, /ready)\n",
        ),
    }
}

fn json_reply(v: &Value) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec_pretty(v).unwrap_or_default();
    reply(StatusCode::OK, "application/json", body)
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str) -> Request<()> {
        Request::get(path).body(()).unwrap()
    }

    #[test]
    fn ready_after_start_and_read_only() {
        let state = DebugState::default();
        assert_eq!(
            answer(&state, &get("/ready")).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        state.set_ready();
        assert_eq!(answer(&state, &get("/ready")).status(), StatusCode::OK);
        let post = Request::post("/debug/status").body(()).unwrap();
        assert_eq!(answer(&state, &post).status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn clients_come_and_go() {
        let clients = Clients::default();
        let state = DebugState::default();
        state.set_clients(clients.clone());
        let a = clients.register("10.0.0.1:5000");
        a.update(crate::xds::Session::new("sidecar~10.0.0.1~z~ns.svc").status());
        let b = clients.register("10.0.0.2:5000");
        let listed = state.status()["clients"].clone();
        assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed:#}");
        assert_eq!(listed[0]["nodeId"], "sidecar~10.0.0.1~z~ns.svc");
        assert_eq!(listed[0]["client"], "ztunnel");
        assert_eq!(listed[1]["peer"], "10.0.0.2:5000");
        drop(a);
        drop(b);
        assert_eq!(state.status()["clients"], json!([]));
    }
}
