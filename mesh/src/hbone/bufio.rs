//! A read buffer between an HBONE connection's TCP socket and rustls.
//!
//! rustls pulls ciphertext at most 4 KiB at a time, so a bulk transfer of 16 KiB TLS records
//! would cost four or more `recv` calls per record (each also returning receive-window
//! credit and possibly an ACK). Reading up to [`READ_SIZE`] from the socket at once and handing
//! rustls its small reads from memory costs one cheap copy and saves most of those syscalls.
//! Writes pass straight through: rustls already hands the socket whole batches of records.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes asked of the socket per read.
const READ_SIZE: usize = 64 << 10;

/// `io` with a read buffer in front of it.
#[derive(Debug)]
pub struct BufferedRead<S> {
    io: S,
    /// Unconsumed bytes. Room for `READ_SIZE` is reserved while data flows and released
    /// when a quiet socket has nothing to read, so an idle connection holds no buffer.
    buf: BytesMut,
    /// Bytes the last read from the socket brought.
    last_fill: usize,
}

impl<S> BufferedRead<S> {
    pub fn new(io: S) -> Self {
        BufferedRead {
            io,
            buf: BytesMut::new(),
            last_fill: 0,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for BufferedRead<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.buf.is_empty() {
            // A caller asking for at least a buffer's worth gains nothing from the copy.
            if out.remaining() >= READ_SIZE {
                return Pin::new(&mut this.io).poll_read(cx, out);
            }
            this.buf.reserve(READ_SIZE);
            match tokio_util::io::poll_read_buf(Pin::new(&mut this.io), cx, &mut this.buf) {
                Poll::Ready(r) => this.last_fill = r?,
                Poll::Pending => {
                    // Quiet (the last read was small): hold no buffer while waiting. A busy
                    // connection keeps it; freeing and refaulting it is what would cost.
                    if this.last_fill < READ_SIZE / 4 {
                        this.buf = BytesMut::new();
                    }
                    return Poll::Pending;
                }
            }
        }
        let n = this.buf.len().min(out.remaining());
        out.put_slice(&this.buf[..n]);
        this.buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for BufferedRead<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn small_reads_are_served_from_one_large_read_and_nothing_is_lost() {
        let (mut a, b) = tokio::io::duplex(1 << 20);
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let writer = {
            let data = data.clone();
            tokio::spawn(async move {
                a.write_all(&data).await.unwrap();
                a.shutdown().await.unwrap();
            })
        };
        let mut r = BufferedRead::new(b);
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = r.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&chunk[..n]);
        }
        writer.await.unwrap();
        assert_eq!(got.len(), data.len());
        assert!(
            got == data,
            "bytes came out in a different order or changed"
        );
    }

    #[tokio::test]
    async fn large_reads_bypass_the_buffer() {
        let (mut a, b) = tokio::io::duplex(1 << 20);
        a.write_all(&[7u8; 100]).await.unwrap();
        let mut r = BufferedRead::new(b);
        let mut big = vec![0u8; READ_SIZE];
        assert_eq!(r.read(&mut big).await.unwrap(), 100);
        assert!(
            r.buf.is_empty(),
            "a large read must not allocate the buffer"
        );
    }
}
