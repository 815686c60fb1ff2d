//! The mesh's crypto provider: aws-lc-rs for everything (key exchange, signatures, hashes,
//! HKDF), with the AES-GCM record protection of TLS 1.3 done by `ring`.
//!
//! Why: sealing and opening records is most of ztunnel's user-space time on the HBONE path
//! (`perf` on the pair benchmark's client ztunnel: aws-lc's AES-GCM 12.5 % of all its CPU).
//! aws-lc (0.47) has an AVX-512 AES-GCM and the older AES-NI + AVX one, nothing between;
//! `ring` (0.17.14) also has a VAES + VPCLMULQDQ AVX2 one, which the AMD and Intel server CPUs
//! of the last years without AVX-512 (Zen 3 and later, for one) run. On this project's VM (AMD
//! EPYC, VAES, no AVX-512) 16 KiB records sealed with AES-128-GCM take 0.14 s per GB with
//! `ring` and 0.24 with aws-lc. Where the CPU lacks VAES, `ring` picks its AES-NI + AVX code,
//! the same algorithm as aws-lc's.
//!
//! Only the record layer changes: the cipher suites keep their identities, hashes, HKDF and
//! limits, so peers (Istio's ztunnel included) see the same TLS. rustls' own `ring` provider is
//! not used because enabling rustls' `ring` feature beside `aws_lc_rs` leaves processes without
//! an automatic default provider, which code that calls `ClientConfig::builder()` (the
//! controller, and dependencies) relies on.

use std::sync::LazyLock;

use rustls::crypto::cipher::{
    make_tls13_aad, AeadKey, InboundOpaqueMessage, InboundPlainMessage, Iv, MessageDecrypter,
    MessageEncrypter, Nonce, OutboundOpaqueMessage, OutboundPlainMessage, PrefixedPayload,
    Tls13AeadAlgorithm, UnsupportedOperationError,
};
use rustls::crypto::CryptoProvider;
use rustls::{
    CipherSuite, CipherSuiteCommon, ConnectionTrafficSecrets, ContentType, Error, ProtocolVersion,
    SupportedCipherSuite, Tls13CipherSuite,
};

/// The AES-GCM tag, 16 bytes for both key sizes.
const TAG_LEN: usize = 16;

/// aws-lc-rs' default provider with the TLS 1.3 AES-GCM suites' record protection from `ring`.
pub fn provider() -> CryptoProvider {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites = provider
        .cipher_suites
        .into_iter()
        .map(|suite| match suite {
            SupportedCipherSuite::Tls13(s) => SupportedCipherSuite::Tls13(with_ring(s)),
            other => other,
        })
        .collect();
    provider
}

/// The suite with `ring` sealing and opening its records, when it is an AES-GCM one.
fn with_ring(suite: &'static Tls13CipherSuite) -> &'static Tls13CipherSuite {
    // Built once per process: a cipher suite is referenced for 'static by every config.
    type Replaced = LazyLock<Option<&'static Tls13CipherSuite>>;
    static AES_128: Replaced = LazyLock::new(|| {
        replaced(
            rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256,
            &ring::aead::AES_128_GCM,
        )
    });
    static AES_256: Replaced = LazyLock::new(|| {
        replaced(
            rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384,
            &ring::aead::AES_256_GCM,
        )
    });
    let ours = match suite.common.suite {
        CipherSuite::TLS13_AES_128_GCM_SHA256 => *AES_128,
        CipherSuite::TLS13_AES_256_GCM_SHA384 => *AES_256,
        _ => None,
    };
    ours.unwrap_or(suite)
}

/// `suite` (an aws-lc-rs TLS 1.3 suite) with its AEAD done by `ring`'s `algorithm`; None if
/// it is not a TLS 1.3 suite (they all are), so that the suite stays as it is.
fn replaced(
    suite: SupportedCipherSuite,
    algorithm: &'static ring::aead::Algorithm,
) -> Option<&'static Tls13CipherSuite> {
    let base = suite.tls13()?;
    let aead: &'static RingGcm = Box::leak(Box::new(RingGcm {
        algorithm,
        fallback: base.aead_alg,
    }));
    Some(Box::leak(Box::new(Tls13CipherSuite {
        common: CipherSuiteCommon {
            suite: base.common.suite,
            hash_provider: base.common.hash_provider,
            confidentiality_limit: base.common.confidentiality_limit,
        },
        hkdf_provider: base.hkdf_provider,
        aead_alg: aead,
        // The mesh speaks TLS over TCP only.
        quic: None,
    })))
}

/// AES-GCM through `ring`; `fallback` (the aws-lc-rs algorithm of the same suite) answers what
/// is not about sealing records, and seals them itself should `ring` refuse a key.
struct RingGcm {
    algorithm: &'static ring::aead::Algorithm,
    fallback: &'static dyn Tls13AeadAlgorithm,
}

impl RingGcm {
    fn key(&self, key: &AeadKey) -> Option<ring::aead::LessSafeKey> {
        ring::aead::UnboundKey::new(self.algorithm, key.as_ref())
            .ok()
            .map(ring::aead::LessSafeKey::new)
    }
}

impl Tls13AeadAlgorithm for RingGcm {
    fn encrypter(&self, key: AeadKey, iv: Iv) -> Box<dyn MessageEncrypter> {
        match self.key(&key) {
            Some(key) => Box::new(Sealer { key, iv }),
            // rustls derives keys of `key_len()` bytes, which ring accepts; never reached.
            None => self.fallback.encrypter(key, iv),
        }
    }

    fn decrypter(&self, key: AeadKey, iv: Iv) -> Box<dyn MessageDecrypter> {
        match self.key(&key) {
            Some(key) => Box::new(Opener { key, iv }),
            None => self.fallback.decrypter(key, iv),
        }
    }

    fn key_len(&self) -> usize {
        self.fallback.key_len()
    }

    fn extract_keys(
        &self,
        key: AeadKey,
        iv: Iv,
    ) -> Result<ConnectionTrafficSecrets, UnsupportedOperationError> {
        self.fallback.extract_keys(key, iv)
    }
}

/// The per-record nonce of TLS 1.3: the write IV with the record's sequence number XORed in.
fn nonce(iv: &Iv, seq: u64) -> ring::aead::Nonce {
    ring::aead::Nonce::assume_unique_for_key(Nonce::new(iv, seq).0)
}

struct Sealer {
    key: ring::aead::LessSafeKey,
    iv: Iv,
}

impl MessageEncrypter for Sealer {
    fn encrypt(
        &mut self,
        msg: OutboundPlainMessage<'_>,
        seq: u64,
    ) -> Result<OutboundOpaqueMessage, Error> {
        // TLSInnerPlaintext: the content, then its real type; no padding.
        let total = self.encrypted_payload_len(msg.payload.len());
        let mut payload = PrefixedPayload::with_capacity(total);
        payload.extend_from_chunks(&msg.payload);
        payload.extend_from_slice(&[u8::from(msg.typ)]);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                nonce(&self.iv, seq),
                ring::aead::Aad::from(make_tls13_aad(total)),
                payload.as_mut(),
            )
            .map_err(|_| Error::EncryptError)?;
        payload.extend_from_slice(tag.as_ref());
        // Every protected record goes out as application data, version 1.2 (RFC 8446 5.2).
        Ok(OutboundOpaqueMessage::new(
            ContentType::ApplicationData,
            ProtocolVersion::TLSv1_2,
            payload,
        ))
    }

    fn encrypted_payload_len(&self, payload_len: usize) -> usize {
        payload_len + 1 + TAG_LEN
    }
}

struct Opener {
    key: ring::aead::LessSafeKey,
    iv: Iv,
}

impl MessageDecrypter for Opener {
    fn decrypt<'a>(
        &mut self,
        mut msg: InboundOpaqueMessage<'a>,
        seq: u64,
    ) -> Result<InboundPlainMessage<'a>, Error> {
        let payload = &mut msg.payload;
        if payload.len() < TAG_LEN {
            return Err(Error::DecryptError);
        }
        let aad = ring::aead::Aad::from(make_tls13_aad(payload.len()));
        let plain = self
            .key
            .open_in_place(nonce(&self.iv, seq), aad, &mut payload[..])
            .map_err(|_| Error::DecryptError)?
            .len();
        payload.truncate(plain);
        msg.into_tls13_unpadded_message()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::crypto::cipher::OutboundChunks;

    /// A record sealed by one implementation opens with the other, both ways; a flipped bit,
    /// a wrong sequence number or a short record is refused. (AES-256 only: a 16-byte
    /// `AeadKey` cannot be made outside rustls; `tests/tls_provider.rs` runs whole handshakes
    /// with both suites.)
    #[test]
    fn ring_records_are_aws_lc_records() {
        let aws = rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384
            .tls13()
            .unwrap();
        let ours = with_ring(aws);
        assert!(
            !std::ptr::addr_eq(ours.aead_alg, aws.aead_alg),
            "not replaced"
        );
        assert_eq!(ours.common.suite, aws.common.suite);
        let key = || AeadKey::from(std::array::from_fn(|i| i as u8 * 7 + 1));
        let iv = || Iv::new([0x24; 12]);
        let body: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        let chunks = [&body[..1000], &body[1000..]];
        for (seal, open) in [(ours, aws), (aws, ours)] {
            let mut enc = seal.aead_alg.encrypter(key(), iv());
            let mut dec = open.aead_alg.decrypter(key(), iv());
            let mut open_at = |bytes: &[u8], seq| -> Result<Vec<u8>, Error> {
                let mut b = bytes.to_vec();
                let plain = dec.decrypt(
                    InboundOpaqueMessage::new(
                        ContentType::ApplicationData,
                        ProtocolVersion::TLSv1_2,
                        &mut b,
                    ),
                    seq,
                )?;
                assert_eq!(plain.typ, ContentType::ApplicationData);
                Ok(plain.payload.to_vec())
            };
            let mut last = Vec::new();
            for seq in 0..3u64 {
                let msg = OutboundPlainMessage {
                    typ: ContentType::ApplicationData,
                    version: ProtocolVersion::TLSv1_3,
                    payload: OutboundChunks::new(&chunks),
                };
                let wire = enc.encrypt(msg, seq).unwrap().encode();
                assert_eq!(wire.len(), 5 + body.len() + 1 + TAG_LEN);
                last = wire[5..].to_vec();
                assert_eq!(open_at(&last, seq).unwrap(), body, "seq {seq}");
            }
            let mut flipped = last.clone();
            flipped[10] ^= 1;
            assert!(matches!(open_at(&flipped, 2), Err(Error::DecryptError)));
            assert!(matches!(open_at(&last, 3), Err(Error::DecryptError)));
            assert!(matches!(
                open_at(&last[..TAG_LEN - 1], 2),
                Err(Error::DecryptError)
            ));
        }
    }

    #[test]
    fn the_provider_offers_the_same_suites_in_the_same_order() {
        let ours: Vec<CipherSuite> = provider().cipher_suites.iter().map(|s| s.suite()).collect();
        let aws: Vec<CipherSuite> = rustls::crypto::aws_lc_rs::default_provider()
            .cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect();
        assert_eq!(ours, aws);
        let replaced = provider()
            .cipher_suites
            .iter()
            .filter_map(|s| s.tls13())
            .filter(|s| {
                !std::ptr::addr_eq(
                    s.aead_alg,
                    rustls::crypto::aws_lc_rs::default_provider()
                        .cipher_suites
                        .iter()
                        .find(|a| a.suite() == s.common.suite)
                        .and_then(|a| a.tls13())
                        .unwrap()
                        .aead_alg,
                )
            })
            .count();
        assert_eq!(replaced, 2, "both AES-GCM suites use ring");
    }
}
