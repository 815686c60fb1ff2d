//! The few facts amesh reads out of an X.509 certificate (URI SANs, serial, validity, CA flag),
//! parsed once with x509-parser so the TLS verifier and the store agree on them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// What amesh needs to know about one certificate.
#[derive(Debug, Clone)]
pub(crate) struct CertFacts {
    /// Every URI subject alternative name, in certificate order (SPIFFE IDs live here).
    pub uri_sans: Vec<String>,
    /// Serial number as lower-case hex without separators, as `openssl x509 -serial` shows it.
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// `basicConstraints CA:TRUE`: such a certificate may sign others and is never a workload leaf.
    pub is_ca: bool,
}

/// Parses a DER certificate. The error is a short reason for a message, never a panic: the input
/// may come straight from the network.
pub(crate) fn facts(der: &[u8]) -> Result<CertFacts, String> {
    let (rest, cert) =
        X509Certificate::from_der(der).map_err(|e| format!("not a DER X.509 certificate: {e}"))?;
    if !rest.is_empty() {
        return Err(format!(
            "{} trailing bytes after the certificate",
            rest.len()
        ));
    }
    let mut uri_sans = Vec::new();
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("unreadable subjectAltName extension: {e}"))?;
    if let Some(san) = san {
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name {
                uri_sans.push((*uri).to_string());
            }
        }
    }
    let is_ca = cert
        .basic_constraints()
        .map_err(|e| format!("unreadable basicConstraints extension: {e}"))?
        .is_some_and(|bc| bc.value.ca);
    let validity = cert.validity();
    Ok(CertFacts {
        uri_sans,
        serial: hex(cert.raw_serial()),
        not_before: system_time(validity.not_before.timestamp()),
        not_after: system_time(validity.not_after.timestamp()),
        is_ca,
    })
}

/// One certificate as Istio ztunnel's `/config_dump` shows it: serial in decimal (istioctl
/// parses it base 10), validity bounds. The error is a short reason, as for [`facts`].
pub(crate) fn dump_facts(der: &[u8]) -> Result<(String, SystemTime, SystemTime), String> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| format!("not a DER X.509 certificate: {e}"))?;
    let validity = cert.validity();
    Ok((
        cert.serial.to_string(),
        system_time(validity.not_before.timestamp()),
        system_time(validity.not_after.timestamp()),
    ))
}

/// The SubjectPublicKeyInfo DER of a certificate, to check that a key belongs to it.
pub(crate) fn spki(der: &[u8]) -> Result<Vec<u8>, String> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| format!("not a DER X.509 certificate: {e}"))?;
    Ok(cert.public_key().raw.to_vec())
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            // Writing to a String cannot fail.
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn system_time(unix_secs: i64) -> SystemTime {
    // X.509 dates run from 1950 to 9999, all representable on the platforms amesh runs on; if a
    // platform could not represent one, fall back to the epoch, which reads as "expired" (the
    // safe side) rather than panicking on input from the network.
    let offset = Duration::from_secs(unix_secs.unsigned_abs());
    let t = if unix_secs >= 0 {
        UNIX_EPOCH.checked_add(offset)
    } else {
        UNIX_EPOCH.checked_sub(offset)
    };
    t.unwrap_or(UNIX_EPOCH)
}

/// Formats a wall-clock time as RFC 3339 UTC (`2025-01-31T12:00:00Z`) for error messages.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    };
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(dt) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            dt.year(),
            u8::from(dt.month()),
            dt.day(),
            dt.hour(),
            dt.minute(),
            dt.second()
        ),
        Err(_) => format!("{secs} seconds since 1970"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(facts(b"").is_err());
        assert!(facts(&[0x30, 0x82, 0xff, 0xff, 0x00]).is_err());
        assert!(spki(b"\x30\x03\x02\x01\x00").is_err());
    }

    #[test]
    fn formats_times() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            "2023-11-14T22:13:20Z"
        );
        assert_eq!(hex(&[0x01, 0xab]), "01ab");
    }
}
