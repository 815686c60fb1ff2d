//! Whatever signs workload CSRs: the local file CA in the lab and tests, the controller's
//! `IstioCertificateService` in a cluster.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use super::error::CaError;
use crate::Identity;

/// The future a [`CertificateProvider`] returns: PEM certificates, leaf first, root last.
pub type SignFuture<'a> = Pin<Box<dyn Future<Output = Result<Vec<String>, CaError>> + Send + 'a>>;

/// Signs a CSR for an identity. Boxed future so that managers can hold `Arc<dyn
/// CertificateProvider>` and tests can swap in fakes.
pub trait CertificateProvider: Send + Sync {
    /// Asks for a certificate for `identity` valid for about `ttl` (the signer may shorten it).
    /// Returns the chain as PEM strings: leaf first, root last.
    fn sign<'a>(
        &'a self,
        identity: &'a Identity,
        csr_pem: &'a str,
        ttl: Duration,
    ) -> SignFuture<'a>;
}
