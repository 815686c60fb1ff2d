//! What the CNI plugin asks the Kubernetes API before it decides anything: the pod being
//! added (its labels, service account, host network) and its namespace's labels. Read-only,
//! two GETs, with the kubeconfig the installer wrote next to the plugin's configuration, as
//! Istio's CNI plugin does. The pod's status is never needed: a pod has no IP in the API
//! until its CNI ADD has returned.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::Value;

/// Largest API answer read: a pod object is a few KiB.
const MAX_BODY: usize = 1 << 20;

/// Why the API could not answer.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("kubeconfig {}: {detail}", path.display())]
    Config { path: PathBuf, detail: String },
    #[error("asking the Kubernetes API ({server}) for {what}: {detail} (is the API server reachable from the node?)")]
    Unreachable {
        server: String,
        what: String,
        detail: String,
    },
    #[error("the Kubernetes API ({server}) answered {status} for {what}: {detail}")]
    Status {
        server: String,
        what: String,
        status: u16,
        detail: String,
    },
}

/// Where the API server is and how to prove who we are, from a kubeconfig.
#[derive(Clone)]
pub struct Kubeconfig {
    /// `https://host:port`.
    server: http::Uri,
    tls: Arc<rustls::ClientConfig>,
    token: Option<String>,
}

impl std::fmt::Debug for Kubeconfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kubeconfig")
            .field("server", &self.server)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    clusters: Vec<Named<RawCluster>>,
    #[serde(default)]
    users: Vec<Named<RawUser>>,
    #[serde(default)]
    contexts: Vec<Named<RawContext>>,
    #[serde(rename = "current-context", default)]
    current_context: Option<String>,
}

#[derive(Deserialize)]
struct Named<T> {
    name: String,
    #[serde(alias = "cluster", alias = "user", alias = "context")]
    value: T,
}

#[derive(Deserialize)]
struct RawCluster {
    server: String,
    #[serde(rename = "certificate-authority", default)]
    certificate_authority: Option<PathBuf>,
    #[serde(rename = "certificate-authority-data", default)]
    certificate_authority_data: Option<String>,
}

#[derive(Deserialize, Default)]
struct RawUser {
    #[serde(default)]
    token: Option<String>,
    #[serde(rename = "tokenFile", default)]
    token_file: Option<PathBuf>,
}

#[derive(Deserialize)]
struct RawContext {
    cluster: String,
    user: String,
}

impl Kubeconfig {
    /// Reads a kubeconfig: the current context's cluster (an `https://` server and its CA,
    /// as a file or inline) and user (a bearer token, inline or in a file).
    pub fn load(path: &Path) -> Result<Kubeconfig, KubeError> {
        let fail = |detail: String| KubeError::Config {
            path: path.to_path_buf(),
            detail,
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read: {e}")))?;
        let raw: RawConfig =
            serde_yaml::from_str(&text).map_err(|e| fail(format!("not a kubeconfig: {e}")))?;
        let context = match &raw.current_context {
            Some(name) => raw.contexts.iter().find(|c| &c.name == name),
            None => raw.contexts.first(),
        }
        .ok_or_else(|| fail("no current context".into()))?;
        let cluster = raw
            .clusters
            .iter()
            .find(|c| c.name == context.value.cluster)
            .ok_or_else(|| fail(format!("no cluster named {:?}", context.value.cluster)))?;
        let user = raw
            .users
            .iter()
            .find(|u| u.name == context.value.user)
            .map(|u| &u.value);
        let server: http::Uri = cluster
            .value
            .server
            .parse()
            .map_err(|e| fail(format!("server {:?}: {e}", cluster.value.server)))?;
        if server.scheme_str() != Some("https") || server.host().is_none() {
            return Err(fail(format!(
                "server {:?} must be https://host[:port]",
                cluster.value.server
            )));
        }
        let ca_pem = match (
            &cluster.value.certificate_authority,
            &cluster.value.certificate_authority_data,
        ) {
            (_, Some(data)) => base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .map_err(|e| fail(format!("certificate-authority-data: {e}")))?,
            (Some(file), None) => {
                let file = path.parent().unwrap_or(Path::new("/")).join(file);
                std::fs::read(&file)
                    .map_err(|e| fail(format!("certificate-authority {}: {e}", file.display())))?
            }
            (None, None) => return Err(fail("the cluster names no certificate authority".into())),
        };
        let pem = String::from_utf8(ca_pem)
            .map_err(|_| fail("the certificate authority is not PEM text".into()))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in mesh::certs::parse_pem_certs(&pem, "certificate authority")
            .map_err(|e| fail(e.to_string()))?
        {
            roots
                .add(cert)
                .map_err(|e| fail(format!("certificate authority: {e}")))?;
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let token = match user {
            Some(RawUser {
                token_file: Some(file),
                ..
            }) => Some(
                std::fs::read_to_string(file)
                    .map_err(|e| fail(format!("tokenFile {}: {e}", file.display())))?
                    .trim()
                    .to_string(),
            ),
            Some(RawUser { token, .. }) => token.clone(),
            None => None,
        };
        Ok(Kubeconfig {
            server,
            tls: Arc::new(tls),
            token,
        })
    }

    /// GETs `path` (an API path) and returns the JSON object; `Ok(None)` for 404.
    fn get(&self, path: &str, what: &str, timeout: Duration) -> Result<Option<Value>, KubeError> {
        let server = self.server.to_string();
        let unreachable = |detail: String| KubeError::Unreachable {
            server: server.clone(),
            what: what.to_string(),
            detail,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| unreachable(format!("starting a runtime: {e}")))?;
        let exchange = async {
            let host = self.server.host().unwrap_or_default();
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let port = self.server.port_u16().unwrap_or(443);
            let tcp = tokio::net::TcpStream::connect((host, port))
                .await
                .map_err(|e| unreachable(format!("connecting: {e}")))?;
            let name = rustls_pki_types::ServerName::try_from(host.to_string())
                .map_err(|e| unreachable(format!("server name {host:?}: {e}")))?;
            let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| unreachable(format!("TLS: {e}")))?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|e| unreachable(format!("HTTP: {e}")))?;
            tokio::spawn(conn);
            let mut req = http::Request::get(path)
                .header(http::header::HOST, host)
                .header(http::header::ACCEPT, "application/json")
                .body(Empty::<Bytes>::new())
                .map_err(|e| unreachable(e.to_string()))?;
            if let Some(token) = &self.token {
                let value = http::HeaderValue::from_str(&format!("Bearer {token}"))
                    .map_err(|_| unreachable("the token is not a valid header value".into()))?;
                req.headers_mut().insert(http::header::AUTHORIZATION, value);
            }
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| unreachable(format!("HTTP: {e}")))?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| unreachable(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok::<_, KubeError>((status, body))
        };
        let (status, body) = runtime
            .block_on(async { tokio::time::timeout(timeout, exchange).await })
            .map_err(|_| unreachable(format!("no answer within {timeout:?}")))??;
        if status == http::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let value: Value = serde_json::from_slice(&body).map_err(|e| KubeError::Status {
            server: server.clone(),
            what: what.to_string(),
            status: status.as_u16(),
            detail: format!("not JSON: {e}"),
        })?;
        if !status.is_success() {
            return Err(KubeError::Status {
                server,
                what: what.to_string(),
                status: status.as_u16(),
                detail: value["message"].as_str().unwrap_or_default().to_string(),
            });
        }
        Ok(Some(value))
    }

    /// The pod `namespace/name`, or `None` if the API does not know it.
    pub fn pod(
        &self,
        namespace: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<Option<PodFacts>, KubeError> {
        let path = format!("/api/v1/namespaces/{namespace}/pods/{name}");
        let what = format!("pod {namespace}/{name}");
        Ok(self
            .get(&path, &what, timeout)?
            .map(|v| PodFacts::from_json(&v)))
    }

    /// The labels of namespace `name`, or `None` if the API does not know it.
    pub fn namespace_labels(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<Option<BTreeMap<String, String>>, KubeError> {
        let path = format!("/api/v1/namespaces/{name}");
        let what = format!("namespace {name}");
        Ok(self.get(&path, &what, timeout)?.map(|v| labels(&v)))
    }
}

/// What the plugin needs of a pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodFacts {
    pub labels: BTreeMap<String, String>,
    /// `spec.serviceAccountName` (or the deprecated `serviceAccount`), `default` when unset.
    pub service_account: String,
    pub host_network: bool,
}

impl PodFacts {
    fn from_json(v: &Value) -> PodFacts {
        let spec = &v["spec"];
        let service_account = spec["serviceAccountName"]
            .as_str()
            .or(spec["serviceAccount"].as_str())
            .filter(|s| !s.is_empty())
            .unwrap_or("default")
            .to_string();
        PodFacts {
            labels: labels(v),
            service_account,
            host_network: spec["hostNetwork"].as_bool().unwrap_or(false),
        }
    }
}

fn labels(v: &Value) -> BTreeMap<String, String> {
    v["metadata"]["labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}
