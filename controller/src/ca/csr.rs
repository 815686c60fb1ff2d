//! The CSR of a `CreateCertificate` request, parsed strictly: one PEM `CERTIFICATE REQUEST`
//! block whose DER is one PKCS#10 CertificationRequest and nothing after it, with a valid
//! self-signature. Lenient parsers read the first request and drop what follows it; a request
//! that carries bytes nobody checked is refused here instead, as Go's `x509` (istiod's parser)
//! refuses "trailing data".

use rcgen::CertificateSigningRequestParams;
use rustls::pki_types::pem::{PemObject, SectionKind};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer;

/// Why a CSR was refused; each message says what to check in the client's request.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CsrError {
    /// The text is not PEM, or a block is malformed.
    #[error("the CSR is not valid PEM: {0}")]
    Pem(String),
    /// No PEM block of the right label.
    #[error("the CSR holds no PEM CERTIFICATE REQUEST block")]
    Missing,
    /// More than one PEM block, or a block of another kind.
    #[error(
        "the CSR must be exactly one PEM CERTIFICATE REQUEST block, found {count} blocks \
         ({kinds})"
    )]
    NotOneRequest {
        /// How many PEM blocks the text holds.
        count: usize,
        /// Their labels.
        kinds: String,
    },
    /// The DER is not a PKCS#10 CertificationRequest.
    #[error("the CSR's DER is not a PKCS#10 certification request: {0}")]
    Der(String),
    /// Bytes follow the CertificationRequest inside the PEM block.
    #[error("the CSR's DER has {0} bytes after the CertificationRequest")]
    TrailingBytes(usize),
    /// Well-formed, but rcgen refused it (bad self-signature, unsupported algorithm or
    /// extension).
    #[error("the CSR is not a valid PKCS#10 request: {0}")]
    Invalid(String),
}

/// Parses and verifies `pem` as above; the parameters carry the subject alternative names and
/// the public key.
pub fn parse(pem: &str) -> Result<CertificateSigningRequestParams, CsrError> {
    let mut blocks = Vec::new();
    for block in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem.as_bytes()) {
        blocks.push(block.map_err(|e| CsrError::Pem(e.to_string()))?);
    }
    let der = match blocks.as_slice() {
        [] => return Err(CsrError::Missing),
        [(SectionKind::Csr, der)] => der,
        more => {
            let kinds: Vec<String> = more.iter().map(|(k, _)| format!("{k:?}")).collect();
            return Err(CsrError::NotOneRequest {
                count: more.len(),
                kinds: kinds.join(", "),
            });
        }
    };
    let (rest, _) =
        X509CertificationRequest::from_der(der).map_err(|e| CsrError::Der(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CsrError::TrailingBytes(rest.len()));
    }
    let params = CertificateSigningRequestParams::from_der(&der.as_slice().into())
        .map_err(|e| CsrError::Invalid(e.to_string()))?;
    // The signer (`LocalCa::sign_csr`) reads the PEM again with rcgen's reader, which is
    // stricter about the armor lines than the one above: text it cannot read would pass here
    // and fail at signing, so it is refused here too.
    CertificateSigningRequestParams::from_pem(pem).map_err(|e| CsrError::Pem(e.to_string()))?;
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateSigningRequestDer;

    fn identity() -> mesh::Identity {
        "spiffe://cluster.local/ns/mesh/sa/client"
            .parse()
            .expect("literal identity")
    }

    /// A real CSR's DER, as ztunnel makes it.
    fn der() -> Vec<u8> {
        let csr = mesh::certs::generate_csr(&identity()).expect("generate a CSR");
        CertificateSigningRequestDer::from_pem_slice(csr.pem.as_bytes())
            .expect("our own CSR is PEM")
            .as_ref()
            .to_vec()
    }

    fn pem_of(label: &str, der: &[u8]) -> String {
        use base64::Engine;
        let body = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = body
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).expect("base64 is ASCII"))
            .collect();
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            lines.join("\n")
        )
    }

    #[test]
    fn a_real_csr_parses() {
        let params = parse(&pem_of("CERTIFICATE REQUEST", &der())).expect("valid CSR");
        assert_eq!(params.params.subject_alt_names.len(), 1);
    }

    #[test]
    fn trailing_bytes_after_the_request_are_refused() {
        for extra in [&[0u8][..], &[0x30, 0x00], b"garbage after the request"] {
            let mut der = der();
            der.extend_from_slice(extra);
            let e = parse(&pem_of("CERTIFICATE REQUEST", &der)).unwrap_err();
            assert_eq!(e, CsrError::TrailingBytes(extra.len()), "{e}");
            assert!(
                e.to_string().contains("after the CertificationRequest"),
                "{e}"
            );
        }
    }

    #[test]
    fn anything_but_one_request_block_is_refused() {
        let one = pem_of("CERTIFICATE REQUEST", &der());
        assert_eq!(
            parse(&format!("{one}{one}")).unwrap_err(),
            CsrError::NotOneRequest {
                count: 2,
                kinds: "Csr, Csr".into()
            }
        );
        assert!(matches!(
            parse(&pem_of("CERTIFICATE", &der())),
            Err(CsrError::NotOneRequest { count: 1, .. })
        ));
        assert_eq!(parse("").unwrap_err(), CsrError::Missing);
        assert_eq!(parse("not pem at all").unwrap_err(), CsrError::Missing);
        assert!(matches!(
            parse("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n"),
            Err(CsrError::Pem(_))
        ));
    }

    /// Found by the `csr` fuzz target: junk after the BEGIN line's dashes passed this parse
    /// (and named an identity) but not the signer's PEM reader.
    #[test]
    fn junk_on_the_armor_line_is_refused() {
        let good = pem_of("CERTIFICATE REQUEST", &der());
        let bad = good.replacen(
            "-----BEGIN CERTIFICATE REQUEST-----",
            "-----BEGIN CERTIFICATE REQUEST-----   -",
            1,
        );
        assert!(parse(&good).is_ok());
        let e = parse(&bad).unwrap_err();
        assert!(matches!(e, CsrError::Pem(_)), "{e}");
    }

    #[test]
    fn a_truncated_or_tampered_request_is_refused() {
        let der = der();
        let e = parse(&pem_of("CERTIFICATE REQUEST", &der[..der.len() - 1])).unwrap_err();
        assert!(matches!(e, CsrError::Der(_)), "{e}");
        // A flipped bit in the signature: the DER is well-formed, the signature is not.
        let mut tampered = der.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 0x01;
        let e = parse(&pem_of("CERTIFICATE REQUEST", &tampered)).unwrap_err();
        assert!(matches!(e, CsrError::Invalid(_)), "{e}");
    }
}
