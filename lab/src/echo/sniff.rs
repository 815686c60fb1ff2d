//! Telling the protocol of a fresh connection from its first bytes (sans-IO), and handing those
//! bytes back to whoever serves the connection.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Longest request line we wait for before deciding the peer does not speak HTTP/1.
pub const MAX_REQUEST_LINE: usize = 8192;
const MAX_METHOD: usize = 20;

/// What the first bytes of a connection say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/2 with prior knowledge (h2c): the bytes start with the preface.
    Http2,
    /// An HTTP/1.x request line.
    Http1,
    /// Anything else: echoed back verbatim.
    Raw,
}

/// The verdict on the bytes seen so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sniff {
    Known(Protocol),
    /// Still a prefix of the preface or of a request line: read more (or time out into Raw).
    Incomplete,
}

/// Classifies the first bytes of a connection.
pub fn classify(buf: &[u8]) -> Sniff {
    if buf.is_empty() {
        return Sniff::Incomplete;
    }
    if buf.len() >= H2_PREFACE.len() && buf.starts_with(H2_PREFACE) {
        return Sniff::Known(Protocol::Http2);
    }
    if H2_PREFACE.starts_with(buf) {
        return Sniff::Incomplete;
    }
    let method_len = buf.iter().take_while(|b| b.is_ascii_uppercase()).count();
    if method_len == buf.len() {
        return if method_len <= MAX_METHOD {
            Sniff::Incomplete
        } else {
            Sniff::Known(Protocol::Raw)
        };
    }
    if method_len == 0 || method_len > MAX_METHOD || buf[method_len] != b' ' {
        return Sniff::Known(Protocol::Raw);
    }
    let Some(eol) = buf.iter().position(|b| *b == b'\n') else {
        return if buf.len() < MAX_REQUEST_LINE {
            Sniff::Incomplete
        } else {
            Sniff::Known(Protocol::Raw)
        };
    };
    let line = buf[..eol].strip_suffix(b"\r").unwrap_or(&buf[..eol]);
    let version = line.rsplit(|b| *b == b' ').next().unwrap_or_default();
    if version == b"HTTP/1.1" || version == b"HTTP/1.0" {
        Sniff::Known(Protocol::Http1)
    } else {
        Sniff::Known(Protocol::Raw)
    }
}

/// A stream that first yields bytes already read from it (the sniffed prefix).
#[derive(Debug)]
pub struct Rewind<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Rewind<S> {
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Rewind { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.has_remaining() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http2_preface() {
        assert_eq!(classify(H2_PREFACE), Sniff::Known(Protocol::Http2));
        assert_eq!(classify(&H2_PREFACE[..10]), Sniff::Incomplete);
        let mut more = H2_PREFACE.to_vec();
        more.extend_from_slice(b"\x00\x00\x12\x04");
        assert_eq!(classify(&more), Sniff::Known(Protocol::Http2));
    }

    #[test]
    fn http1_request_line() {
        assert_eq!(
            classify(b"GET / HTTP/1.1\r\nHost: x\r\n"),
            Sniff::Known(Protocol::Http1)
        );
        assert_eq!(
            classify(b"POST /a HTTP/1.0\n"),
            Sniff::Known(Protocol::Http1)
        );
        assert_eq!(classify(b"GET"), Sniff::Incomplete);
        assert_eq!(classify(b"GET /index"), Sniff::Incomplete);
        assert_eq!(classify(b"GET / SPDY/3\r\n"), Sniff::Known(Protocol::Raw));
        // "PRI * HTTP/2.0" that is not the whole preface is not HTTP/1 either.
        assert_eq!(
            classify(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n"),
            Sniff::Known(Protocol::Raw)
        );
    }

    #[test]
    fn anything_else_is_raw_at_once() {
        assert_eq!(classify(b"hello"), Sniff::Known(Protocol::Raw));
        assert_eq!(classify(b"\x00"), Sniff::Known(Protocol::Raw));
        assert_eq!(classify(b"GETX/"), Sniff::Known(Protocol::Raw));
        assert_eq!(classify(&[b'A'; 30]), Sniff::Known(Protocol::Raw));
        assert_eq!(classify(&[b'x'; 10]), Sniff::Known(Protocol::Raw));
        let mut long = b"GET /".to_vec();
        long.resize(MAX_REQUEST_LINE, b'a');
        assert_eq!(classify(&long), Sniff::Known(Protocol::Raw));
    }
}
