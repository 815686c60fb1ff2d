//! The CA's CSR handling: the controller's first parse of a `CreateCertificate` request
//! (`controller::ca::service::requested_identity`: the CSR's only URI SAN) and the signer's
//! (`mesh::certs::LocalCa::sign_csr`), on a caller's PEM.
//!
//! Input: byte 0 bit 0 = the rest is PEM text as sent (1) or DER to wrap in PEM (0, so the
//! fuzzer works on the structure rather than on base64). Checks that both parses agree (an
//! identity the controller reads from a CSR is one the signer accepts for it) and that a
//! certificate issued carries exactly the identity asked for.
#![no_main]

use std::sync::LazyLock;
use std::time::Duration;

use amesh_proto::istio::v1::auth::IstioCertificateRequest;
use base64::Engine;
use controller::ca::service::requested_identity;
use libfuzzer_sys::fuzz_target;
use mesh::certs::{CaError, LocalCa};
use x509_parser::extensions::GeneralName;
use x509_parser::pem::parse_x509_pem;

const TRUST_DOMAIN: &str = "cluster.local";

/// One CA for the whole run: generated in a private temporary folder, which is removed once
/// the CA is in memory.
static CA: LazyLock<LocalCa> = LazyLock::new(|| {
    let dir = std::env::temp_dir().join(format!("amesh-fuzz-csr-{}", std::process::id()));
    let ca = LocalCa::load_or_create(&dir, TRUST_DOMAIN).expect("a CA is generated");
    let _ = std::fs::remove_dir_all(&dir);
    ca
});

fuzz_target!(|data: &[u8]| {
    let [mode, rest @ ..] = data else {
        return;
    };
    let pem = if mode & 1 == 1 {
        let Ok(text) = std::str::from_utf8(rest) else {
            return;
        };
        text.to_string()
    } else {
        let b64 = base64::engine::general_purpose::STANDARD.encode(rest);
        format!("-----BEGIN CERTIFICATE REQUEST-----\n{b64}\n-----END CERTIFICATE REQUEST-----\n")
    };
    let request = IstioCertificateRequest {
        csr: pem.clone(),
        ..Default::default()
    };
    let Ok(identity) = requested_identity(&request) else {
        return;
    };
    match CA.sign_csr(&pem, &identity, Duration::from_secs(3600)) {
        Ok(chain) => {
            assert_eq!(identity.trust_domain(), TRUST_DOMAIN);
            let leaf = chain.first().expect("a chain starts with the leaf");
            let (_, pem) = parse_x509_pem(leaf.as_bytes()).expect("the leaf is PEM");
            let cert = pem.parse_x509().expect("the leaf is X.509");
            let sans = cert
                .subject_alternative_name()
                .expect("one SAN extension")
                .expect("a SAN extension");
            let uris: Vec<&str> = sans
                .value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(*u),
                    _ => None,
                })
                .collect();
            assert_eq!(
                uris,
                [identity.to_string().as_str()],
                "issued for another identity"
            );
        }
        Err(CaError::ForeignTrustDomain { .. }) => {
            assert_ne!(identity.trust_domain(), TRUST_DOMAIN);
        }
        Err(e @ (CaError::InvalidCsr { .. } | CaError::CsrIdentityMismatch { .. })) => {
            panic!("the controller read {identity} from the CSR, the signer refused it: {e}")
        }
        Err(_) => {}
    }
});
