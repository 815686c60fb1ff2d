//! gRPC over h2c without protobuf: messages are opaque bytes in gRPC's length-prefixed framing
//! (1 byte compressed flag, 4 bytes big-endian length, the message). Two methods:
//! `/echo.Echo/Unary` answers the request message as is, `/echo.Echo/Stream` answers it
//! [`STREAM_COPIES`] times as separate messages; both end with `grpc-status: 0` in trailers.

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::{Frame, Incoming};

use super::body::EchoBody;

pub const UNARY: &str = "/echo.Echo/Unary";
pub const STREAM: &str = "/echo.Echo/Stream";
/// How many messages `/echo.Echo/Stream` answers.
pub const STREAM_COPIES: usize = 5;
/// gRPC's default largest message.
pub const MAX_MESSAGE: usize = 4 << 20;
const PREFIX: usize = 5;

// Status codes (grpc/doc/statuscodes.md).
const OK: u32 = 0;
const INVALID_ARGUMENT: u32 = 3;
const RESOURCE_EXHAUSTED: u32 = 8;
const UNIMPLEMENTED: u32 = 12;

/// Whether a request is a gRPC call: HTTP/2 with an `application/grpc` content type.
pub fn is_grpc<B>(req: &Request<B>) -> bool {
    req.version() == http::Version::HTTP_2
        && req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/grpc"))
}

/// One message in gRPC framing, uncompressed.
pub fn encode(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(PREFIX + message.len());
    out.put_u8(0);
    // A message over 4 GiB cannot be framed; callers stay far below (MAX_MESSAGE).
    out.put_u32(u32::try_from(message.len()).unwrap_or(u32::MAX));
    out.put_slice(message);
    out.freeze()
}

/// Why a gRPC body does not parse.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum GrpcFrameError {
    #[error("message {index} is compressed, and no compression was negotiated")]
    Compressed { index: usize },
    #[error("message {index} is {len} bytes, over the limit of {max}")]
    TooLarge {
        index: usize,
        len: usize,
        max: usize,
    },
    #[error("the body ends inside message {index} ({left} bytes left over)")]
    Truncated { index: usize, left: usize },
}

/// Every message of a whole gRPC body.
pub fn decode(body: &Bytes, max: usize) -> Result<Vec<Bytes>, GrpcFrameError> {
    let mut messages = Vec::new();
    let mut at = 0;
    while at < body.len() {
        let index = messages.len();
        let left = body.len() - at;
        let Some(prefix) = body.get(at..at + PREFIX) else {
            return Err(GrpcFrameError::Truncated { index, left });
        };
        if prefix[0] != 0 {
            return Err(GrpcFrameError::Compressed { index });
        }
        let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
        if len > max {
            return Err(GrpcFrameError::TooLarge { index, len, max });
        }
        let start = at + PREFIX;
        if body.len() - start < len {
            return Err(GrpcFrameError::Truncated { index, left });
        }
        messages.push(body.slice(start..start + len));
        at = start + len;
    }
    Ok(messages)
}

/// Answers one gRPC call.
pub async fn answer(req: Request<Incoming>) -> Response<EchoBody> {
    let (parts, body) = req.into_parts();
    let copies = match parts.uri.path() {
        UNARY => 1,
        STREAM => STREAM_COPIES,
        other => return status_only(UNIMPLEMENTED, &format!("unknown method {other}")),
    };
    // One request message, so the whole body is small: it is read at once, within a limit.
    let body = match Limited::new(body, MAX_MESSAGE + PREFIX).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return status_only(RESOURCE_EXHAUSTED, &format!("request body: {e}"));
        }
    };
    let message = match decode(&body, MAX_MESSAGE) {
        Ok(mut messages) if messages.len() == 1 => messages.remove(0),
        Ok(messages) => {
            let got = messages.len();
            return status_only(
                INVALID_ARGUMENT,
                &format!("expected one request message, got {got}"),
            );
        }
        Err(e) => return status_only(INVALID_ARGUMENT, &e.to_string()),
    };
    let framed = encode(&message);
    let mut frames: Vec<Frame<Bytes>> = (0..copies).map(|_| Frame::data(framed.clone())).collect();
    frames.push(Frame::trailers(trailers(OK, None)));
    response(EchoBody::frames(frames))
}

fn trailers(status: u32, message: Option<&str>) -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", HeaderValue::from(status));
    // grpc-message is percent-encoded text; ours are ASCII, anything else is left out.
    if let Some(v) = message.and_then(|m| HeaderValue::from_str(m).ok()) {
        t.insert("grpc-message", v);
    }
    t
}

/// A failed call: no messages, just the status in trailers.
fn status_only(status: u32, message: &str) -> Response<EchoBody> {
    response(EchoBody::frames([Frame::trailers(trailers(
        status,
        Some(message),
    ))]))
}

fn response(body: EchoBody) -> Response<EchoBody> {
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_round_trips() {
        let framed = encode(b"hello");
        assert_eq!(&framed[..], b"\x00\x00\x00\x00\x05hello");
        let mut two = BytesMut::from(&framed[..]);
        two.extend_from_slice(&encode(b""));
        let got = decode(&two.freeze(), 100).unwrap();
        assert_eq!(got, [Bytes::from_static(b"hello"), Bytes::new()]);
        assert_eq!(decode(&Bytes::new(), 100).unwrap(), Vec::<Bytes>::new());
    }

    #[test]
    fn bad_frames_are_errors_not_panics() {
        let cut = Bytes::from_static(b"\x00\x00\x00\x00\x05hel");
        assert_eq!(
            decode(&cut, 100),
            Err(GrpcFrameError::Truncated { index: 0, left: 8 })
        );
        let short_prefix = Bytes::from_static(b"\x00\x00\x00");
        assert_eq!(
            decode(&short_prefix, 100),
            Err(GrpcFrameError::Truncated { index: 0, left: 3 })
        );
        let compressed = Bytes::from_static(b"\x01\x00\x00\x00\x01x");
        assert_eq!(
            decode(&compressed, 100),
            Err(GrpcFrameError::Compressed { index: 0 })
        );
        let huge = Bytes::from_static(b"\x00\xff\xff\xff\xffx");
        assert_eq!(
            decode(&huge, 100),
            Err(GrpcFrameError::TooLarge {
                index: 0,
                len: u32::MAX as usize,
                max: 100
            })
        );
    }

    #[test]
    fn only_http2_with_the_grpc_content_type_is_grpc() {
        let req = |version, ct: &str| {
            Request::builder()
                .version(version)
                .header("content-type", ct)
                .body(())
                .unwrap()
        };
        assert!(is_grpc(&req(http::Version::HTTP_2, "application/grpc")));
        assert!(is_grpc(&req(
            http::Version::HTTP_2,
            "application/grpc+proto"
        )));
        assert!(!is_grpc(&req(http::Version::HTTP_11, "application/grpc")));
        assert!(!is_grpc(&req(http::Version::HTTP_2, "application/json")));
    }
}
