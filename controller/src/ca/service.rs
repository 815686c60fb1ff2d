//! `IstioCertificateService/CreateCertificate`: authenticate the caller by its bearer token
//! ([`Authenticator`]), read the identity asked for (`ImpersonatedIdentity`, else the CSR's
//! URI SAN), check that the caller may have it — a node: a pod of that identity runs on the
//! node; a workload: it is the workload's own identity — and sign with the local CA.
//!
//! | refusal | code |
//! |---|---|
//! | no or unknown token | UNAUTHENTICATED |
//! | valid token of a caller that is neither a node agent nor a ServiceAccount | PERMISSION_DENIED |
//! | the Kubernetes API cannot review the token | UNAVAILABLE |
//! | identity of no pod on the caller's node, or another trust domain | PERMISSION_DENIED |
//! | a workload asking for another identity than its own | PERMISSION_DENIED |
//! | malformed CSR or identity, CSR not for the identity asked | INVALID_ARGUMENT |

use std::sync::Arc;
use std::time::Duration;

use amesh_proto::istio::v1::auth::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use amesh_proto::istio::v1::auth::{IstioCertificateRequest, IstioCertificateResponse};
use mesh::certs::{CaError, LocalCa, IMPERSONATED_IDENTITY};
use mesh::Identity;
use prost_types::value::Kind;
use rcgen::SanType;
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use super::auth::{Authenticator, Caller};
use super::{csr, placement};
use crate::manifests::Manifests;

/// Longest certificate validity granted unless configured otherwise (Istio's default TTL).
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// The CA service.
#[derive(Clone)]
pub struct CaService {
    ca: Arc<LocalCa>,
    auth: Authenticator,
    /// The current manifests: where pods are scheduled.
    manifests: watch::Receiver<Arc<Manifests>>,
    max_ttl: Duration,
}

impl std::fmt::Debug for CaService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaService")
            .field("ca", &self.ca)
            .field("auth", &self.auth)
            .field("max_ttl", &self.max_ttl)
            .finish_non_exhaustive()
    }
}

impl CaService {
    /// Signs with `ca` for the nodes `auth` recognises, following pod placement in
    /// `manifests`; grants at most `max_ttl`.
    pub fn new(
        ca: Arc<LocalCa>,
        auth: impl Into<Authenticator>,
        manifests: watch::Receiver<Arc<Manifests>>,
        max_ttl: Duration,
    ) -> Self {
        CaService {
            ca,
            auth: auth.into(),
            manifests,
            max_ttl,
        }
    }

    /// The gRPC service to add to a tonic server.
    pub fn into_service(self) -> IstioCertificateServiceServer<Self> {
        IstioCertificateServiceServer::new(self)
    }

    /// The TTL to grant: what was asked, at most `max_ttl`; nothing asked means `max_ttl`.
    fn ttl(&self, validity_seconds: i64) -> Duration {
        match u64::try_from(validity_seconds) {
            Ok(secs) if secs > 0 => Duration::from_secs(secs).min(self.max_ttl),
            _ => self.max_ttl,
        }
    }
}

/// The identity asked for: `ImpersonatedIdentity` if present, else the CSR's only URI SAN.
/// Public for the fuzz target `csr` (`fuzz/`), the first parse of a caller's CSR.
#[doc(hidden)]
pub fn requested_identity(request: &IstioCertificateRequest) -> Result<Identity, Status> {
    // Parsed strictly whatever identity is asked for: the CSR is what gets signed.
    let csr = csr::parse(&request.csr).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let impersonated = request
        .metadata
        .as_ref()
        .and_then(|m| m.fields.get(IMPERSONATED_IDENTITY));
    let id = match impersonated.and_then(|v| v.kind.as_ref()) {
        Some(Kind::StringValue(id)) => id.clone(),
        Some(_) => {
            return Err(Status::invalid_argument(format!(
                "metadata {IMPERSONATED_IDENTITY} must be a string SPIFFE ID"
            )))
        }
        None => {
            let uris: Vec<String> = csr
                .params
                .subject_alt_names
                .iter()
                .filter_map(|san| match san {
                    SanType::URI(uri) => Some(uri.as_str().to_owned()),
                    _ => None,
                })
                .collect();
            match uris.as_slice() {
                [one] => one.clone(),
                _ => {
                    return Err(Status::invalid_argument(format!(
                        "the CSR must carry exactly one URI SAN (the SPIFFE ID), found {uris:?}"
                    )))
                }
            }
        }
    };
    id.parse()
        .map_err(|e: mesh::IdentityError| Status::invalid_argument(e.to_string()))
}

fn status_of(error: CaError) -> Status {
    match error {
        CaError::InvalidCsr { .. } | CaError::CsrIdentityMismatch { .. } => {
            Status::invalid_argument(error.to_string())
        }
        CaError::ForeignTrustDomain { .. } => Status::permission_denied(error.to_string()),
        other => Status::internal(other.to_string()),
    }
}

#[tonic::async_trait]
impl IstioCertificateService for CaService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let peer = request.remote_addr();
        let caller = self
            .auth
            .authenticate(request.metadata())
            .await
            .inspect_err(|status| {
                warn!(?peer, "CA: refused: {}", status.message());
            })?;
        let request = request.into_inner();
        let result = (|| {
            let identity = requested_identity(&request)?;
            if identity.trust_domain() != self.ca.trust_domain() {
                return Err(Status::permission_denied(format!(
                    "this CA signs trust domain {:?} only, not {identity}",
                    self.ca.trust_domain()
                )));
            }
            match &caller {
                Caller::Node(node) => {
                    placement::authorize(&self.manifests.borrow(), node, &identity)
                        .map_err(Status::permission_denied)?;
                }
                Caller::Workload {
                    namespace,
                    service_account,
                } => {
                    if identity.namespace() != namespace
                        || identity.service_account() != service_account
                    {
                        return Err(Status::permission_denied(format!(
                            "{caller} may obtain only its own identity \
                             (spiffe://{}/ns/{namespace}/sa/{service_account}), not {identity}",
                            self.ca.trust_domain()
                        )));
                    }
                }
            }
            let ttl = self.ttl(request.validity_duration);
            let chain = self
                .ca
                .sign_csr(&request.csr, &identity, ttl)
                .map_err(status_of)?;
            Ok((identity, ttl, chain))
        })();
        match result {
            Ok((identity, ttl, chain)) => {
                info!(%caller, %identity, ?ttl, "CA: issued a certificate");
                Ok(Response::new(IstioCertificateResponse {
                    cert_chain: chain,
                }))
            }
            Err(status) => {
                warn!(%caller, code = ?status.code(), "CA: refused: {}", status.message());
                Err(status)
            }
        }
    }
}
