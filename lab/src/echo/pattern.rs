//! The deterministic byte pattern of `GET /bytes/N` and the streaming digest of `POST /digest`,
//! shared with test clients so that gigabyte transfers are checked byte for byte without either
//! side holding them: byte `i` of a stream is `(i * 31 + 7) % 251`.

use std::sync::OnceLock;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Largest piece [`pattern`] hands out at once, and the size of the chunks `/bytes/N` sends.
pub const CHUNK: usize = 64 * 1024;

/// The pattern repeats every 251 bytes (a prime, so it never lines up with power-of-two sizes
/// and a chunk dropped, repeated or shifted by a power of two is caught).
const PERIOD: u64 = 251;

/// Byte `i` of every pattern stream.
pub fn pattern_byte(i: u64) -> u8 {
    // (i mod 251) * 31 + 7 < 251 * 31 + 7, so nothing overflows for any i.
    (((i % PERIOD) * 31 + 7) % PERIOD) as u8
}

/// One period plus one chunk of the pattern: any piece of up to [`CHUNK`] bytes is a slice of
/// it, so sending and checking need no copying.
fn table() -> &'static Bytes {
    static TABLE: OnceLock<Bytes> = OnceLock::new();
    TABLE.get_or_init(|| {
        (0..PERIOD + CHUNK as u64)
            .map(pattern_byte)
            .collect::<Vec<u8>>()
            .into()
    })
}

/// The pattern's bytes from `offset` on: `len` of them, at most [`CHUNK`].
pub fn pattern(offset: u64, len: usize) -> Bytes {
    let start = (offset % PERIOD) as usize;
    table().slice(start..start + len.min(CHUNK))
}

/// Where `data`, received from `offset` of a pattern stream on, first differs from the pattern
/// (as an offset in the stream), if it does.
pub fn first_mismatch(offset: u64, data: &[u8]) -> Option<u64> {
    let mut at = 0usize;
    for piece in data.chunks(CHUNK) {
        let expected = pattern(offset + at as u64, piece.len());
        if piece != &expected[..] {
            let i = piece.iter().zip(expected.iter()).position(|(a, b)| a != b);
            return Some(offset + (at + i.unwrap_or(0)) as u64);
        }
        at += piece.len();
    }
    None
}

/// What `POST /digest` answers: how many bytes its body had and their SHA-256.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestReply {
    pub bytes: u64,
    /// Lowercase hex.
    pub sha256: String,
    /// False when the body broke off before its end (the figures cover what arrived).
    pub complete: bool,
}

/// A SHA-256 and a byte count over a stream fed in pieces.
pub struct Digest {
    bytes: u64,
    sha: aws_lc_rs::digest::Context,
}

impl Default for Digest {
    fn default() -> Self {
        Digest {
            bytes: 0,
            sha: aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256),
        }
    }
}

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Digest")
            .field("bytes", &self.bytes)
            .finish()
    }
}

impl Digest {
    pub fn update(&mut self, data: &[u8]) {
        self.bytes += data.len() as u64;
        self.sha.update(data);
    }

    pub fn finish(self, complete: bool) -> DigestReply {
        let sum = self.sha.finish();
        DigestReply {
            bytes: self.bytes,
            sha256: sum.as_ref().iter().map(|b| format!("{b:02x}")).collect(),
            complete,
        }
    }
}

/// The digest of the first `len` bytes of the pattern, as a client that uploads them expects.
pub fn pattern_digest(len: u64) -> DigestReply {
    let mut d = Digest::default();
    let mut offset = 0;
    while offset < len {
        let piece = pattern(offset, (len - offset).min(CHUNK as u64) as usize);
        d.update(&piece);
        offset += piece.len() as u64;
    }
    d.finish(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_pieces_agree_with_the_formula() {
        assert_eq!(pattern_byte(0), 7);
        assert_eq!(pattern_byte(1), 38);
        assert_eq!(pattern_byte(8), 4); // 255 % 251
        assert_eq!(pattern_byte(251), 7);
        for offset in [0u64, 1, 250, 251, 1 << 30, (1 << 30) + 17, u64::MAX - 400] {
            let piece = pattern(offset, 300);
            assert_eq!(piece.len(), 300);
            for (k, b) in piece.iter().enumerate() {
                assert_eq!(*b, pattern_byte(offset + k as u64), "{offset}+{k}");
            }
        }
        assert_eq!(pattern(5, CHUNK * 3).len(), CHUNK);
    }

    #[test]
    fn mismatches_are_found_where_they_are() {
        let mut data: Vec<u8> = (1000..1000 + 3 * CHUNK as u64 + 5)
            .map(pattern_byte)
            .collect();
        assert_eq!(first_mismatch(1000, &data), None);
        // The same bytes claimed one byte later are wrong at once.
        assert_eq!(first_mismatch(1001, &data), Some(1001));
        data[2 * CHUNK + 3] ^= 1;
        assert_eq!(
            first_mismatch(1000, &data),
            Some(1000 + 2 * CHUNK as u64 + 3)
        );
    }

    #[test]
    fn digest_of_known_inputs() {
        let empty = Digest::default().finish(true);
        assert_eq!(empty.bytes, 0);
        assert_eq!(
            empty.sha256,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        // Fed in pieces or at once, "abc" has the FIPS 180-2 example digest.
        let mut d = Digest::default();
        d.update(b"a");
        d.update(b"bc");
        let abc = d.finish(true);
        assert_eq!(abc.bytes, 3);
        assert_eq!(
            abc.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        // The pattern's digest covers exactly its bytes.
        let n = 2 * CHUNK as u64 + 77;
        let mut whole = Digest::default();
        whole.update(&(0..n).map(pattern_byte).collect::<Vec<u8>>());
        assert_eq!(pattern_digest(n), whole.finish(true));
        assert_ne!(pattern_digest(n), pattern_digest(n - 1));
    }
}
