//! Channels to the control plane (xDS and the CA). An `http://` address is plaintext gRPC (the
//! lab's or a test's local port); an `https://` address is TLS, with the server's certificate
//! verified against the control plane's root — what Istio mounts as `root-cert.pem` from the
//! `istio-ca-root-cert` ConfigMap — and the address's host as the name to verify.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

/// Where Istio's ztunnel finds the control plane's root unless told otherwise.
pub const DEFAULT_ROOT_CA_PATH: &str = "/var/run/secrets/istio/root-cert.pem";

/// Why a control-plane endpoint could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{address:?} is not a valid control plane URI: {reason}")]
    InvalidAddress { address: String, reason: String },
    #[error("{address:?}: only http:// (plaintext) and https:// (TLS) are supported")]
    Scheme { address: String },
    #[error("{address} is TLS but no root certificate to verify it was given")]
    NoRoot { address: String },
    #[error("cannot read the control plane's root certificate {}: {source}", path.display())]
    ReadRoot {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: no PEM certificate in it", path.display())]
    EmptyRoot { path: PathBuf },
    #[error("TLS settings for {address}: {reason}")]
    Tls { address: String, reason: String },
}

/// How to verify a TLS control plane: its root certificate(s), PEM, and optionally the name to
/// verify instead of the address's host (`ALT_XDS_HOSTNAME` / `ALT_CA_HOSTNAME`, as Istio's
/// ztunnel, for an address that is an IP or a name the certificate does not carry).
#[derive(Clone)]
pub struct ControlRoot {
    pem: Vec<u8>,
    server_name: Option<String>,
}

impl std::fmt::Debug for ControlRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlRoot")
            .field("bytes", &self.pem.len())
            .field("server_name", &self.server_name)
            .finish()
    }
}

impl ControlRoot {
    /// Reads a PEM file; it must hold at least one certificate.
    pub fn load(path: &Path) -> Result<Self, ControlError> {
        let pem = std::fs::read(path).map_err(|source| ControlError::ReadRoot {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_pem(pem).ok_or_else(|| ControlError::EmptyRoot {
            path: path.to_path_buf(),
        })
    }

    /// PEM bytes holding at least one `CERTIFICATE` block.
    pub fn from_pem(pem: impl Into<Vec<u8>>) -> Option<Self> {
        let pem = pem.into();
        let text = String::from_utf8_lossy(&pem);
        text.contains("-----BEGIN CERTIFICATE-----")
            .then_some(ControlRoot {
                pem,
                server_name: None,
            })
    }

    /// Verifies the server as `name` rather than as the address's host.
    pub fn with_server_name(mut self, name: Option<String>) -> Self {
        self.server_name = name.filter(|n| !n.is_empty());
        self
    }
}

/// Whether `address` asks for TLS.
/// A control-plane address as Istio's proxies read it: without a scheme, it is `https://`.
pub fn with_scheme(address: &str) -> String {
    if address.contains("://") {
        address.to_string()
    } else {
        format!("https://{address}")
    }
}

pub fn is_tls(address: &str) -> bool {
    address
        .get(..8)
        .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
}

/// A gRPC endpoint for `address`: TLS (verified against `root`) for `https://`, plaintext for
/// `http://`. Connects only when used.
pub fn endpoint(
    address: &str,
    root: Option<&ControlRoot>,
    connect_timeout: Duration,
) -> Result<Endpoint, ControlError> {
    let invalid = |reason: String| ControlError::InvalidAddress {
        address: address.to_string(),
        reason,
    };
    let endpoint = Endpoint::from_shared(address.to_string())
        .map_err(|e| invalid(e.to_string()))?
        .connect_timeout(connect_timeout);
    let scheme = endpoint.uri().scheme_str().unwrap_or_default().to_owned();
    match scheme.as_str() {
        "http" => Ok(endpoint),
        "https" => {
            let root = root.ok_or_else(|| ControlError::NoRoot {
                address: address.to_string(),
            })?;
            let host = match &root.server_name {
                Some(name) => name.clone(),
                None => endpoint
                    .uri()
                    .host()
                    .ok_or_else(|| invalid("no host".into()))?
                    // An IPv6 literal comes bracketed in the URI; the certificate names the
                    // bare address.
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned(),
            };
            // Only the control plane's own root: the system's public roots must not vouch
            // for a control plane.
            let tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&root.pem))
                .domain_name(host);
            endpoint.tls_config(tls).map_err(|e| ControlError::Tls {
                address: address.to_string(),
                reason: e.to_string(),
            })
        }
        _ => Err(ControlError::Scheme {
            address: address.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_and_roots() {
        let t = Duration::from_secs(1);
        assert!(endpoint("http://127.0.0.1:15010", None, t).is_ok());
        let e = endpoint("https://127.0.0.1:15012", None, t).unwrap_err();
        assert!(matches!(e, ControlError::NoRoot { .. }), "{e}");
        let e = endpoint("ftp://x:1", None, t).unwrap_err();
        assert!(matches!(e, ControlError::Scheme { .. }), "{e}");
        let e = endpoint("not a uri", None, t).unwrap_err();
        assert!(matches!(e, ControlError::InvalidAddress { .. }), "{e}");
        assert!(ControlRoot::from_pem("junk").is_none());
        assert!(is_tls("HTTPS://a:1") && !is_tls("http://a:1"));
    }

    #[test]
    fn missing_root_file_is_named() {
        let e = ControlRoot::load(Path::new("/nonexistent/root-cert.pem")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/root-cert.pem"), "{e}");
    }
}
