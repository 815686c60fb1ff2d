//! The `certificates` part of a `/config_dump`, in the shape Istio's ztunnel writes and
//! `istioctl ztunnel-config certificates` reads: one entry per identity with its `state` and
//! `certChain` (leaf first, then intermediates), and the trust roots as `rootCerts`.

use rustls_pki_types::CertificateDer;
use serde::Serialize;

use crate::certs::{CertStore, TrustRoots};

/// What one identity's certificate looks like in the dump.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertsDump {
    /// The SPIFFE identity the certificate is for.
    pub identity: String,
    /// `Available` once a certificate is held (istioctl also knows `Initializing` and
    /// `Unavailable: <reason>`; amesh's store holds only issued certificates).
    pub state: String,
    /// Leaf first, then intermediates.
    pub cert_chain: Vec<CertDump>,
    /// The roots peers are verified against (istioctl treats a dump without them as the
    /// older layout whose last chain entry is the root).
    pub root_certs: Vec<CertDump>,
}

/// One certificate of a chain.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertDump {
    /// Base64 of the certificate's PEM text, as Istio's ztunnel writes it.
    pub pem: String,
    /// Serial number in decimal (istioctl parses it base 10 and prints it in hex).
    pub serial_number: String,
    /// RFC 3339, UTC.
    pub valid_from: String,
    /// RFC 3339, UTC.
    pub expiration_time: String,
}

/// Every certificate in `store`, sorted by identity, each with the current `roots`.
pub fn certificates(store: &CertStore, roots: &TrustRoots) -> serde_json::Value {
    let roots: Vec<CertDump> = roots.snapshot().certs().iter().map(cert).collect();
    let dump: Vec<CertsDump> = store
        .list()
        .into_iter()
        .filter_map(|summary| {
            let held = store.get(&summary.identity)?;
            Some(CertsDump {
                identity: summary.identity.to_string(),
                state: "Available".to_string(),
                cert_chain: held.chain().iter().map(cert).collect(),
                root_certs: roots.clone(),
            })
        })
        .collect();
    serde_json::to_value(dump).unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }))
}

/// One certificate as the dump shows it (also the controller's debug page, for its root).
pub fn cert(der: &CertificateDer<'_>) -> CertDump {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let (serial_number, valid_from, expiration_time) = match crate::certs::x509::dump_facts(der) {
        Ok((serial, from, to)) => (serial, super::rfc3339(from), super::rfc3339(to)),
        // Certificates in the store were parsed when inserted; say so rather than hide one.
        Err(e) => (format!("<{e}>"), String::new(), String::new()),
    };
    let body = b64.encode(der.as_ref());
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in body.as_bytes().chunks(64) {
        // base64 output is ASCII, so every 64-byte chunk is valid UTF-8.
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    CertDump {
        pem: b64.encode(pem),
        serial_number,
        valid_from,
        expiration_time,
    }
}
