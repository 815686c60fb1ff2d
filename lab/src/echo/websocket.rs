//! WebSocket (RFC 6455) on `GET /ws`: the upgrade handshake, then every data frame echoed back
//! with its opcode and FIN bit, pings answered with pongs, and a close answered with a close.
//! No extensions. The frame codec is sans-IO and public, so test clients speak the same
//! framing (masked, as clients must).

use base64::Engine;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::body::EchoBody;

pub const PATH: &str = "/ws";
/// The GUID of RFC 6455 §1.3 that the accept key is derived with.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Largest frame payload the echo accepts (a bigger one is closed with 1009).
pub const MAX_PAYLOAD: usize = 16 << 20;

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

// Close codes (RFC 6455 §7.4.1).
const CLOSE_PROTOCOL_ERROR: u16 = 1002;
const CLOSE_TOO_BIG: u16 = 1009;

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`: base64(SHA-1(key + GUID)).
pub fn accept_key(key: &str) -> String {
    let mut input = key.trim().as_bytes().to_vec();
    input.extend_from_slice(GUID.as_bytes());
    let sha1 = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &input);
    base64::engine::general_purpose::STANDARD.encode(sha1.as_ref())
}

/// Whether a header holds `token` in its comma-separated list (case-insensitive), as
/// `Connection: keep-alive, Upgrade` does.
fn has_token(headers: &HeaderMap, name: http::header::HeaderName, token: &str) -> bool {
    (headers.get_all(name).iter())
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Whether a request asks to become a WebSocket (HTTP/1.1 `Upgrade: websocket`).
pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == http::Version::HTTP_11
        && req.method() == http::Method::GET
        && has_token(req.headers(), http::header::UPGRADE, "websocket")
        && has_token(req.headers(), http::header::CONNECTION, "upgrade")
}

/// Answers an upgrade request: 101 and an echo on the upgraded connection, or 400 when the
/// handshake is incomplete.
pub fn answer(mut req: Request<Incoming>) -> Response<EchoBody> {
    let key = (req.headers().get("sec-websocket-key"))
        .and_then(|k| k.to_str().ok())
        .map(accept_key);
    let version_13 = req
        .headers()
        .get("sec-websocket-version")
        .is_some_and(|v| v.as_bytes() == b"13");
    let (Some(accept), true) = (key, version_13) else {
        let mut resp = Response::new(EchoBody::full(
            "a WebSocket upgrade needs Sec-WebSocket-Key and Sec-WebSocket-Version: 13\n",
        ));
        *resp.status_mut() = StatusCode::BAD_REQUEST;
        resp.headers_mut()
            .insert("sec-websocket-version", HeaderValue::from_static("13"));
        return resp;
    };
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                if let Err(e) = echo(TokioIo::new(upgraded)).await {
                    tracing::debug!(error = %e, "WebSocket echo ended with an error");
                }
            }
            Err(e) => tracing::debug!(error = %e, "WebSocket upgrade failed"),
        }
    });
    let mut resp = Response::new(EchoBody::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(
        http::header::CONNECTION,
        HeaderValue::from_static("Upgrade"),
    );
    // base64 is always a valid header value.
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert("sec-websocket-accept", v);
    }
    resp
}

/// One WebSocket frame, unmasked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WsFrame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Bytes,
}

/// Why bytes are not a valid frame.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum WsError {
    #[error("reserved bits set ({0:#x}) without a negotiated extension")]
    Reserved(u8),
    #[error("unknown opcode {0:#x}")]
    Opcode(u8),
    #[error("control frame with {0} bytes or without FIN")]
    BadControl(usize),
    #[error("frame of {0} bytes is over the limit")]
    TooLarge(u64),
    #[error("the client sent an unmasked frame")]
    Unmasked,
}

/// Encodes a frame; clients pass a mask, servers none.
pub fn encode(frame: &WsFrame, mask: Option<[u8; 4]>) -> Bytes {
    let len = frame.payload.len();
    let mut out = BytesMut::with_capacity(len + 14);
    out.put_u8(if frame.fin { 0x80 } else { 0 } | (frame.opcode & 0x0f));
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    if len < 126 {
        out.put_u8(mask_bit | len as u8);
    } else if let Ok(short) = u16::try_from(len) {
        out.put_u8(mask_bit | 126);
        out.put_u16(short);
    } else {
        out.put_u8(mask_bit | 127);
        out.put_u64(len as u64);
    }
    match mask {
        Some(key) => {
            out.put_slice(&key);
            let start = out.len();
            out.put_slice(&frame.payload);
            apply_mask(&mut out[start..], key);
        }
        None => out.put_slice(&frame.payload),
    }
    out.freeze()
}

fn apply_mask(data: &mut [u8], key: [u8; 4]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
}

/// Takes one frame off the front of `buf` if it is all there (`Ok(None)`: read more).
/// `require_mask` is the server's side of RFC 6455 §5.1.
pub fn decode(
    buf: &mut BytesMut,
    max_payload: usize,
    require_mask: bool,
) -> Result<Option<WsFrame>, WsError> {
    let (Some(&b0), Some(&b1)) = (buf.first(), buf.get(1)) else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(WsError::Reserved(b0 & 0x70));
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0f;
    if !matches!(opcode, 0x0..=0x2 | 0x8..=0xA) {
        return Err(WsError::Opcode(opcode));
    }
    let masked = b1 & 0x80 != 0;
    if require_mask && !masked {
        return Err(WsError::Unmasked);
    }
    let (len, mut at) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(l) => (u64::from(u16::from_be_bytes([l[0], l[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(l) => {
                let mut n = [0u8; 8];
                n.copy_from_slice(l);
                (u64::from_be_bytes(n), 10)
            }
            None => return Ok(None),
        },
        short => (u64::from(short), 2),
    };
    if opcode >= 0x8 && (len > 125 || !fin) {
        return Err(WsError::BadControl(len as usize));
    }
    if len > max_payload as u64 {
        return Err(WsError::TooLarge(len));
    }
    let len = len as usize;
    let key = if masked {
        let Some(k) = buf.get(at..at + 4) else {
            return Ok(None);
        };
        at += 4;
        Some([k[0], k[1], k[2], k[3]])
    } else {
        None
    };
    if buf.len() < at + len {
        return Ok(None);
    }
    buf.advance(at);
    let mut payload = buf.split_to(len);
    if let Some(key) = key {
        apply_mask(&mut payload, key);
    }
    Ok(Some(WsFrame {
        fin,
        opcode,
        payload: payload.freeze(),
    }))
}

/// A close frame with a status code.
fn close_frame(code: u16) -> WsFrame {
    WsFrame {
        fin: true,
        opcode: OP_CLOSE,
        payload: Bytes::copy_from_slice(&code.to_be_bytes()),
    }
}

/// The server's echo loop on an upgraded connection.
async fn echo<S: AsyncRead + AsyncWrite + Unpin>(mut io: S) -> std::io::Result<()> {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    loop {
        let frame = match decode(&mut buf, MAX_PAYLOAD, true) {
            Ok(Some(f)) => f,
            Ok(None) => {
                if io.read_buf(&mut buf).await? == 0 {
                    // The client went away without a close frame.
                    return Ok(());
                }
                continue;
            }
            Err(e) => {
                tracing::debug!(error = %e, "bad WebSocket frame");
                let code = match e {
                    WsError::TooLarge(_) => CLOSE_TOO_BIG,
                    _ => CLOSE_PROTOCOL_ERROR,
                };
                io.write_all(&encode(&close_frame(code), None)).await?;
                return io.shutdown().await;
            }
        };
        match frame.opcode {
            OP_PING => {
                let pong = WsFrame {
                    opcode: OP_PONG,
                    ..frame
                };
                io.write_all(&encode(&pong, None)).await?;
            }
            OP_PONG => {}
            OP_CLOSE => {
                // The close handshake: the client's code back, then the server closes TCP.
                io.write_all(&encode(&frame, None)).await?;
                return io.shutdown().await;
            }
            _ => io.write_all(&encode(&frame, None)).await?,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_of_rfc_6455() {
        // RFC 6455 §1.3's example.
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn rfc_6455_examples_decode() {
        // §5.7: a single-frame unmasked and a masked text message "Hello".
        let mut unmasked = BytesMut::from(&b"\x81\x05\x48\x65\x6c\x6c\x6f"[..]);
        let hello = WsFrame {
            fin: true,
            opcode: OP_TEXT,
            payload: Bytes::from_static(b"Hello"),
        };
        assert_eq!(decode(&mut unmasked, 100, false), Ok(Some(hello.clone())));
        assert!(unmasked.is_empty());
        let masked_bytes = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58";
        let mut masked = BytesMut::from(&masked_bytes[..]);
        assert_eq!(decode(&mut masked, 100, true), Ok(Some(hello.clone())));
        assert_eq!(
            &encode(&hello, Some([0x37, 0xfa, 0x21, 0x3d]))[..],
            masked_bytes
        );
        assert_eq!(&encode(&hello, None)[..], b"\x81\x05Hello");
        // The server refuses the unmasked one.
        let mut again = BytesMut::from(&b"\x81\x05Hello"[..]);
        assert_eq!(decode(&mut again, 100, true), Err(WsError::Unmasked));
    }

    #[test]
    fn lengths_and_partial_frames() {
        for len in [125usize, 126, 65535, 65536, 200_000] {
            let frame = WsFrame {
                fin: false,
                opcode: OP_BINARY,
                payload: Bytes::from(vec![0xab; len]),
            };
            let wire = encode(&frame, Some([1, 2, 3, 4]));
            // Every prefix is "read more", never an error or a wrong frame.
            for cut in [1, 2, 3, 9, wire.len() - 1] {
                let mut part = BytesMut::from(&wire[..cut]);
                assert_eq!(
                    decode(&mut part, MAX_PAYLOAD, true),
                    Ok(None),
                    "{len}/{cut}"
                );
            }
            let mut whole = BytesMut::from(&wire[..]);
            whole.extend_from_slice(b"\x89\x80\0\0\0\0");
            assert_eq!(decode(&mut whole, MAX_PAYLOAD, true), Ok(Some(frame)));
            // The next frame (an empty masked ping) is left in the buffer.
            let ping = decode(&mut whole, MAX_PAYLOAD, true).unwrap().unwrap();
            assert_eq!((ping.opcode, ping.payload.len()), (OP_PING, 0));
        }
    }

    #[test]
    fn invalid_frames_are_errors() {
        let bad = |bytes: &[u8]| decode(&mut BytesMut::from(bytes), 1000, false);
        assert_eq!(bad(b"\xc1\x00"), Err(WsError::Reserved(0x40)));
        assert_eq!(bad(b"\x83\x00"), Err(WsError::Opcode(3)));
        assert_eq!(bad(b"\x09\x00"), Err(WsError::BadControl(0)));
        assert_eq!(bad(b"\x89\x7e\x00\x7e"), Err(WsError::BadControl(126)));
        assert_eq!(
            bad(b"\x82\x7f\xff\xff\xff\xff\xff\xff\xff\xff"),
            Err(WsError::TooLarge(u64::MAX))
        );
    }

    #[tokio::test]
    async fn echo_loop_answers_data_ping_and_close() {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let task = tokio::spawn(echo(server));
        let key = Some([9, 8, 7, 6]);
        let frames = [
            WsFrame {
                fin: true,
                opcode: OP_TEXT,
                payload: Bytes::from_static(b"hi"),
            },
            WsFrame {
                fin: true,
                opcode: OP_PING,
                payload: Bytes::from_static(b"p"),
            },
            WsFrame {
                fin: true,
                opcode: OP_BINARY,
                payload: Bytes::from(vec![7u8; 70_000]),
            },
            close_frame(1000),
        ];
        for f in &frames {
            client.write_all(&encode(f, key)).await.unwrap();
        }
        let mut got = BytesMut::new();
        while client.read_buf(&mut got).await.unwrap() > 0 {}
        let mut replies = Vec::new();
        while let Some(f) = decode(&mut got, MAX_PAYLOAD, false).unwrap() {
            replies.push(f);
        }
        let pong = WsFrame {
            opcode: OP_PONG,
            ..frames[1].clone()
        };
        assert_eq!(
            replies,
            [
                frames[0].clone(),
                pong,
                frames[2].clone(),
                frames[3].clone()
            ]
        );
        task.await.unwrap().unwrap();
    }
}
