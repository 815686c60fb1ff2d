//! A stand-in for the Kubernetes API server where the real one cannot run (the lab, tests):
//! the read-only part amesh's components ask for — one pod, one namespace, `/version`, pods
//! listed by label (equality selectors) and the pod proxy's GET (`pods/{name}:{port}/proxy/…`,
//! forwarded from the root netns to the pod's address, as `amesh` uses it) — over
//! HTTPS with a bearer token, answered from a folder of manifests (what the lab's "cluster"
//! holds right now) in the API's own JSON, with 401/404 `Status` bodies as the API server
//! writes them. The folder is read on every request, so what the lab writes (a pod scheduled,
//! its status after CNI ADD) is what the next request sees.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use controller::Manifests;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use mesh::certs::LocalCa;
use serde_json::json;
use tokio::net::TcpListener;

use crate::loaded::LoadedManifests;

/// The API server's port (Kubernetes' secure port).
pub const PORT: u16 = 6443;

/// Connections served at once. Over HTTP/1 each watch holds one: the controller watches some
/// twenty kinds, the CNI plugins' reads are short. Past this, clients wait in the queue.
const MAX_CONNECTIONS: usize = 256;
/// Namespaces every cluster has, whether a manifest declares them or not.
const BUILT_IN_NAMESPACES: [&str; 4] = ["default", "kube-system", "kube-public", "kube-node-lease"];

/// What the server serves and how it proves itself.
#[derive(Clone, Debug)]
pub struct ApiServer {
    /// The manifests folder it answers from.
    pub manifests: PathBuf,
    /// The bearer token clients must present.
    pub token: String,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ApiServerError {
    #[error("serving certificate from the lab CA in {dir}: {reason}")]
    Certificate { dir: String, reason: String },
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A TLS configuration for the server: a certificate of the lab's CA (in `ca_dir`) for `names`
/// (IPs or DNS names), one year.
pub fn tls_config(
    ca_dir: &Path,
    names: &[String],
) -> Result<Arc<rustls::ServerConfig>, ApiServerError> {
    let fail = |reason: String| ApiServerError::Certificate {
        dir: ca_dir.display().to_string(),
        reason,
    };
    let ca = LocalCa::load_or_create(ca_dir, "cluster.local").map_err(|e| fail(e.to_string()))?;
    let cert = ca
        .issue_server(names, Duration::from_secs(365 * 24 * 3600))
        .map_err(|e| fail(e.to_string()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| fail(e.to_string()))?
    .with_no_client_auth()
    .with_cert_resolver(Arc::new(FixedCert(cert.certified)));
    Ok(Arc::new(config))
}

/// Always presents the one certificate.
#[derive(Debug)]
struct FixedCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for FixedCert {
    fn resolve(
        &self,
        _: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// A kubeconfig for a client of the server at `server` (`https://ip:port`), trusting the CA
/// certificate at `ca_file`, presenting `token`.
pub fn kubeconfig(server: &str, ca_file: &Path, token: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: {server}\n    certificate-authority: {}\nusers:\n- name: amesh\n  user:\n    token: {token}\ncontexts:\n- name: lab\n  context: {{cluster: lab, user: amesh}}\ncurrent-context: lab\n",
        ca_file.display()
    )
}

impl ApiServer {
    /// Serves on `listener` until the task is dropped.
    pub async fn serve(self, listener: TcpListener, tls: Arc<rustls::ServerConfig>) {
        let manifests = Arc::new(LoadedManifests::new(self.manifests.clone()));
        let server = Arc::new(self);
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        // The same accept loop as the mesh's listeners: back-off on accept errors and a bound
        // on connections (kube clients keep a few each; the lab has a handful of them).
        mesh::accept::AcceptLoop::new("lab API server")
            .max_connections(MAX_CONNECTIONS)
            .run(listener, move |tcp, _peer| {
                let (server, manifests, acceptor) =
                    (server.clone(), manifests.clone(), acceptor.clone());
                Some(async move {
                    let Ok(Ok(tls)) =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
                    else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req| {
                        let (server, manifests) = (server.clone(), manifests.clone());
                        async move {
                            // The pod proxy waits on the pod; everything else answers at once.
                            let answer = match server.authorized_proxy(&manifests, &req) {
                                Some(ProxyRequest::Forward(addr, path)) => {
                                    proxy_get(addr, &path).await
                                }
                                Some(ProxyRequest::Refused(refused)) => *refused,
                                None => server.answer(&manifests, &req),
                            };
                            Ok::<_, Infallible>(answer)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                })
            })
            .await
    }

    /// For a pod proxy request (`/api/v1/namespaces/{ns}/pods/{name}:{port}/proxy/{path}`):
    /// the pod's address and the path to GET there, or the error answer (unauthorized, not a
    /// GET, no such pod or no IP yet). `None` for any other request.
    fn authorized_proxy(
        &self,
        manifests: &LoadedManifests,
        req: &Request<Incoming>,
    ) -> Option<ProxyRequest> {
        let path = req.uri().path();
        let rest = path.strip_prefix("/api/v1/namespaces/")?;
        let (ns, rest) = rest.split_once("/pods/")?;
        let (target, proxied) = rest.split_once("/proxy")?;
        if ns.contains('/') || target.contains('/') {
            return None;
        }
        if let Err(refused) = self.check(req) {
            return Some(ProxyRequest::Refused(refused));
        }
        let (name, port) = match target.split_once(':') {
            Some((name, port)) => (name, port.parse::<u16>().ok()),
            None => (target, None),
        };
        let Some(port) = port else {
            return Some(ProxyRequest::Refused(Box::new(status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!("{target:?}: give the port, <pod>:<port>"),
            ))));
        };
        let m = manifests.get();
        let key = controller::manifests::ObjectKey::new(ns, name);
        let ip = m
            .pods
            .get(&key)
            .and_then(|p| p.status.as_ref()?.pod_ip.as_deref()?.parse().ok());
        let Some(ip) = ip else {
            return Some(ProxyRequest::Refused(Box::new(status(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("pods \"{name}\" not found, or has no IP yet"),
            ))));
        };
        let mut path = if proxied.is_empty() { "/" } else { proxied }.to_string();
        if let Some(q) = req.uri().query() {
            path = format!("{path}?{q}");
        }
        Some(ProxyRequest::Forward(SocketAddr::new(ip, port), path))
    }

    /// The bearer token and the method (this server only reads).
    fn check(&self, req: &Request<Incoming>) -> Result<(), Box<Response<Full<Bytes>>>> {
        let expected = format!("Bearer {}", self.token);
        let authorized = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == expected);
        if !authorized {
            return Err(Box::new(status(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "Unauthorized",
            )));
        }
        if req.method() != http::Method::GET {
            return Err(Box::new(status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "this API server only reads",
            )));
        }
        Ok(())
    }

    fn answer(
        &self,
        manifests: &LoadedManifests,
        req: &Request<Incoming>,
    ) -> Response<Full<Bytes>> {
        let path = req.uri().path();
        if path == "/version" || path == "/healthz" || path == "/livez" || path == "/readyz" {
            return if path == "/version" {
                reply(
                    StatusCode::OK,
                    json!({"major": "1", "minor": "31", "gitVersion": "v1.31.0-amesh-lab", "platform": "linux/amd64"}),
                )
            } else {
                reply(StatusCode::OK, json!("ok"))
            };
        }
        if let Err(refused) = self.check(req) {
            return *refused;
        }
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let selector = label_selector(req.uri().query());
        match parts.as_slice() {
            ["api", "v1", "namespaces", ns, "pods"] => pods(&manifests.get(), Some(ns), &selector),
            ["api", "v1", "pods"] => pods(&manifests.get(), None, &selector),
            ["api", "v1", "namespaces", ns, "pods", name] => pod(&manifests.get(), ns, name),
            ["api", "v1", "namespaces", ns] => namespace(&manifests.get(), ns),
            _ => status(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("the server could not find the requested resource ({path})"),
            ),
        }
    }
}

fn pod(m: &Manifests, namespace: &str, name: &str) -> Response<Full<Bytes>> {
    let key = controller::manifests::ObjectKey::new(namespace, name);
    match m.pods.get(&key) {
        Some(pod) => reply(StatusCode::OK, json!(pod)),
        None => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("pods \"{name}\" not found"),
        ),
    }
}

/// A pod proxy request: where to forward it, or the answer refusing it.
enum ProxyRequest {
    Forward(SocketAddr, String),
    Refused(Box<Response<Full<Bytes>>>),
}

/// The `labelSelector` of a query as `key=value` pairs (equality only: what amesh asks).
fn label_selector(query: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .filter(|(k, _)| k == "labelSelector")
        .flat_map(|(_, v)| {
            v.split(',')
                .filter_map(|term| {
                    let (k, v) = term.split_once('=')?;
                    Some((
                        k.trim_end_matches('=').trim().to_string(),
                        v.trim().to_string(),
                    ))
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// A `PodList` of the pods in `namespace` (all when `None`) carrying every label of `selector`.
fn pods(
    m: &Manifests,
    namespace: Option<&str>,
    selector: &[(String, String)],
) -> Response<Full<Bytes>> {
    let items: Vec<serde_json::Value> = m
        .pods
        .iter()
        .filter(|(k, _)| namespace.is_none_or(|ns| k.namespace == ns))
        .filter(|(_, p)| {
            let labels = p.metadata.labels.as_ref();
            selector
                .iter()
                .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
        })
        .map(|(_, p)| json!(p))
        .collect();
    reply(
        StatusCode::OK,
        json!({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": items}),
    )
}

/// The pod proxy's GET: HTTP/1.1 to the pod (the server runs in the root netns, which routes
/// to every pod), its status and body passed back; a pod that does not answer is a 503 as the
/// API server gives.
async fn proxy_get(addr: SocketAddr, path: &str) -> Response<Full<Bytes>> {
    use http_body_util::BodyExt;
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(std::io::Error::other)?;
        let conn = tokio::spawn(conn);
        let req = Request::get(path)
            .header(http::header::HOST, addr.to_string())
            .body(http_body_util::Empty::<Bytes>::new())
            .map_err(std::io::Error::other)?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(std::io::Error::other)?;
        let (parts, body) = resp.into_parts();
        let body = http_body_util::Limited::new(body, 64 << 20)
            .collect()
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?
            .to_bytes();
        conn.abort();
        Ok::<_, std::io::Error>(Response::from_parts(parts, Full::new(body)))
    };
    match tokio::time::timeout(Duration::from_secs(10), attempt).await {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            &format!("error trying to reach service: {e}"),
        ),
        Err(_) => status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "error trying to reach service: timeout",
        ),
    }
}

fn namespace(m: &Manifests, name: &str) -> Response<Full<Bytes>> {
    if let Some(ns) = m.namespaces.get(name) {
        return reply(StatusCode::OK, json!(ns));
    }
    // A namespace holding objects exists in a cluster even when no manifest declares it.
    let used: BTreeSet<&str> = m
        .pods
        .keys()
        .chain(m.services.keys())
        .map(|k| k.namespace.as_str())
        .collect();
    if BUILT_IN_NAMESPACES.contains(&name) || used.contains(name) {
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        return reply(StatusCode::OK, json!(ns));
    }
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("namespaces \"{name}\" not found"),
    )
}

fn reply(code: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = code;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// A `Status` object, as the API server answers errors.
fn status(code: StatusCode, reason: &str, message: &str) -> Response<Full<Bytes>> {
    reply(
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": message, "reason": reason, "code": code.as_u16()}),
    )
}

/// Binds `addr` and serves until the process ends (the lab's `apiserver` app).
pub async fn run(
    server: ApiServer,
    addr: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
) -> Result<(), ApiServerError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ApiServerError::Listen { addr, source })?;
    tracing::info!(%addr, manifests = %server.manifests.display(), "API server listening");
    server.serve(listener, tls).await;
    Ok(())
}
