//! Workload certificates: store with rotation, CSRs, the local file CA, the remote CA client and
//! the manager that keeps every local identity's certificate fresh.

mod ca_client;
mod ca_files;
mod csr;
mod error;
mod local_ca;
mod manager;
mod provider;
mod roots;
mod serial;
mod store;
mod workload;
pub(crate) mod x509;

pub use ca_client::{CaClient, CaClientConfig, IMPERSONATED_IDENTITY};
pub use ca_files::{
    generate_root, CaPem, CA_CERT_FILE, CA_KEY_FILE, CERT_CHAIN_FILE, ROOT_CERT_FILE,
};
pub use csr::{generate_csr, Csr};
pub use error::{CaError, CertError};
pub use local_ca::{LocalCa, ServerCert, MAX_TTL, MIN_TTL};
pub use manager::{CertManager, INITIAL_BACKOFF, MAX_BACKOFF};
pub use provider::{CertificateProvider, SignFuture};
pub use roots::{RootSet, TrustRoots};
pub use store::{CertStore, CertSummary};
pub use workload::{parse_pem_certs, WorkloadCert};
