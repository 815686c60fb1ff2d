//! Certificate serial numbers, shared by the CA's root (`ca_files`) and the certificates it
//! issues (`local_ca`).

use rcgen::SerialNumber;

/// A random positive 16-byte serial: unique across restarts without keeping a counter.
pub(super) fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Clear the top bit so the DER INTEGER is positive, and keep the first byte non-zero so the
    // encoding is minimal (RFC 5280 4.1.2.2).
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&bytes)
}
