//! Client of the controller's CA (`istio.v1.auth.IstioCertificateService/CreateCertificate`),
//! authenticated as the node with a bearer token, asking on behalf of pods through the
//! `ImpersonatedIdentity` metadata key, as Istio's node agents do.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use amesh_proto::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient;
use amesh_proto::istio::v1::auth::IstioCertificateRequest;
use arc_swap::ArcSwapOption;
use prost_types::value::Kind;
use prost_types::{Struct, Value};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::error::CaError;

/// How often a followed token file is re-read: the kubelet refreshes projected tokens at 80 %
/// of their life (an hour by default), so a minute is early enough.
pub const TOKEN_REREAD: Duration = Duration::from_secs(60);
use super::provider::{CertificateProvider, SignFuture};
use crate::Identity;

/// Metadata key naming the identity a node agent asks for on a pod's behalf.
pub const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";
/// How long one signing call may take before it counts as the CA being unavailable.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// How to present ourselves to the CA.
#[derive(Clone)]
pub struct CaClientConfig {
    /// Sent as `clusterid`; the CA uses it to pick the cluster whose tokens it validates.
    pub cluster_id: String,
    /// Sent as `authorization: Bearer <token>`: a ServiceAccount token, or the lab's bootstrap
    /// token. `None` sends no authorization header.
    pub token: Option<String>,
    /// Ask for each identity through `ImpersonatedIdentity` (a node agent acting for its pods).
    pub impersonate: bool,
}

impl fmt::Debug for CaClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The token is a credential: never in logs.
        f.debug_struct("CaClientConfig")
            .field("cluster_id", &self.cluster_id)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("impersonate", &self.impersonate)
            .finish()
    }
}

/// A [`CertificateProvider`] backed by a remote `IstioCertificateService`.
pub struct CaClient {
    /// tonic clients are cheap handles on one channel; each call clones it.
    client: IstioCertificateServiceClient<Channel>,
    cluster_id: String,
    /// Replaceable: projected ServiceAccount tokens rotate.
    token: ArcSwapOption<String>,
    impersonate: bool,
}

impl CaClient {
    /// A client over an existing channel (plain or TLS, as the caller set it up).
    pub fn new(channel: Channel, config: CaClientConfig) -> Self {
        CaClient {
            client: IstioCertificateServiceClient::new(channel),
            cluster_id: config.cluster_id,
            token: ArcSwapOption::from_pointee(config.token),
            impersonate: config.impersonate,
        }
    }

    /// A client for `uri` that connects on first use and reconnects as needed: TLS verified
    /// against `root` for `https://…:15012`, plaintext for `http://…`.
    pub fn lazy(
        uri: &str,
        root: Option<&crate::control::ControlRoot>,
        config: CaClientConfig,
    ) -> Result<Self, CaError> {
        let endpoint =
            crate::control::endpoint(uri, root, Duration::from_secs(10)).map_err(|e| {
                CaError::Address {
                    message: e.to_string(),
                }
            })?;
        Ok(Self::new(endpoint.connect_lazy(), config))
    }

    /// Replaces the bearer token for later calls.
    pub fn set_token(&self, token: Option<String>) {
        self.token.store(token.map(std::sync::Arc::new));
    }

    /// Keeps the bearer token equal to `path`'s content, re-read every `TOKEN_REREAD`: the
    /// kubelet rotates projected ServiceAccount tokens in place. The task lives as long as
    /// the client.
    pub fn follow_token_file(self: &std::sync::Arc<Self>, path: std::path::PathBuf) {
        let client = std::sync::Arc::downgrade(self);
        tokio::spawn(async move {
            let mut last = std::fs::read_to_string(&path).ok();
            loop {
                tokio::time::sleep(TOKEN_REREAD).await;
                let Some(client) = client.upgrade() else {
                    return;
                };
                match std::fs::read_to_string(&path) {
                    Ok(token) if Some(&token) != last.as_ref() => {
                        tracing::info!(file = %path.display(), "CA token file changed; using the new token");
                        client.set_token(Some(token.trim().to_string()));
                        last = Some(token);
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(
                        file = %path.display(),
                        error = %e,
                        "cannot re-read the CA token file; keeping the last token"
                    ),
                }
            }
        });
    }

    /// Sends one CSR; returns the PEM chain, leaf first, root last.
    pub async fn create_certificate(
        &self,
        identity: &Identity,
        csr_pem: &str,
        ttl: Duration,
    ) -> Result<Vec<String>, CaError> {
        let metadata = self.impersonate.then(|| Struct {
            fields: BTreeMap::from([(
                IMPERSONATED_IDENTITY.to_string(),
                Value {
                    kind: Some(Kind::StringValue(identity.to_string())),
                },
            )]),
        });
        let mut request = tonic::Request::new(IstioCertificateRequest {
            csr: csr_pem.to_string(),
            validity_duration: i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
            metadata,
        });
        if let Some(token) = self.token.load_full() {
            let value = MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| {
                CaError::BadToken {
                    reason: "it contains characters not allowed in an HTTP header".into(),
                }
            })?;
            request.metadata_mut().insert("authorization", value);
        }
        let cluster =
            MetadataValue::try_from(self.cluster_id.as_str()).map_err(|_| CaError::BadToken {
                reason: format!(
                    "cluster id {:?} is not a valid header value",
                    self.cluster_id
                ),
            })?;
        request.metadata_mut().insert("clusterid", cluster);
        request.set_timeout(CALL_TIMEOUT);

        let mut client = self.client.clone();
        let response = tokio::time::timeout(CALL_TIMEOUT, client.create_certificate(request))
            .await
            .map_err(|_| CaError::Unavailable {
                message: format!("no answer within {CALL_TIMEOUT:?}"),
            })?
            .map_err(|status| status_error(identity, status))?;
        let chain = response.into_inner().cert_chain;
        if chain.is_empty() {
            return Err(CaError::BadResponse {
                identity: identity.clone(),
                reason: "empty certificate chain".into(),
            });
        }
        Ok(chain)
    }
}

impl CertificateProvider for CaClient {
    fn sign<'a>(
        &'a self,
        identity: &'a Identity,
        csr_pem: &'a str,
        ttl: Duration,
    ) -> SignFuture<'a> {
        Box::pin(self.create_certificate(identity, csr_pem, ttl))
    }
}

impl fmt::Debug for CaClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaClient")
            .field("cluster_id", &self.cluster_id)
            .field("impersonate", &self.impersonate)
            .finish_non_exhaustive()
    }
}

/// Maps a gRPC status to what the operator should check.
fn status_error(identity: &Identity, status: Status) -> CaError {
    let mut message = status.message().to_string();
    // Transport failures carry the cause (connection refused, DNS, TLS) as the source.
    crate::xds::error::push_sources(&mut message, std::error::Error::source(&status));
    // tonic reports a connection that broke mid-call (e.g. plaintext spoken to a TLS port) as
    // Unknown with the transport error as its source: that is the CA being unreachable, not
    // an answer of the CA.
    let transport = status.code() == Code::Unknown
        && (std::error::Error::source(&status).is_some()
            || status.message().starts_with("transport error"));
    if transport {
        return CaError::Unavailable { message };
    }
    match status.code() {
        Code::Unauthenticated => CaError::Unauthenticated { message },
        Code::PermissionDenied => CaError::PermissionDenied {
            identity: identity.clone(),
            message,
        },
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => {
            CaError::Unavailable { message }
        }
        code => CaError::Rpc {
            code: format!("{code:?}"),
            message,
        },
    }
}
