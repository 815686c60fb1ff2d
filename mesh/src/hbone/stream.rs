//! One HBONE tunnel as a byte stream: HTTP/2 DATA frames in both directions of a CONNECT stream.
//!
//! Reading releases flow-control capacity only as the caller consumes bytes, so a slow reader
//! slows the sender instead of growing buffers. Shutting down the write side sends END_STREAM
//! (half-close); a peer's RST_STREAM surfaces as `ConnectionReset`.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::slot::Slot;

/// Largest first chunk queued without waiting for flow-control capacity.
const FIRST_CHUNK_MAX: usize = 64 << 10;

/// A tunnel: read what the peer sent, write what it should receive.
pub struct H2Stream {
    reader: H2Reader,
    writer: H2Writer,
}

/// Receiving half of a tunnel.
pub struct H2Reader {
    recv: RecvStream,
    /// Received but not yet consumed bytes of the current DATA frame.
    pending: Bytes,
    /// Bytes handed out by `next_chunk` whose window is returned on the next call.
    unreleased: usize,
    /// Keeps the pool's stream slot taken while either half lives.
    _slot: Option<Arc<Slot>>,
}

/// Sending half of a tunnel.
pub struct H2Writer {
    send: SendStream<Bytes>,
    /// Whether anything was sent yet (see [`H2Writer::send_chunk`]).
    started: bool,
    finished: bool,
    _slot: Option<Arc<Slot>>,
}

pub(crate) fn h2_to_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e
            .into_io()
            .unwrap_or_else(|| io::Error::other("HTTP/2 I/O error"));
    }
    let kind = if e.reason().is_some() {
        io::ErrorKind::ConnectionReset
    } else {
        io::ErrorKind::Other
    };
    io::Error::new(kind, e)
}

impl H2Stream {
    pub(crate) fn new(send: SendStream<Bytes>, recv: RecvStream, slot: Option<Slot>) -> Self {
        let slot = slot.map(Arc::new);
        H2Stream {
            reader: H2Reader::new(recv, slot.clone()),
            writer: H2Writer::new(send, slot),
        }
    }

    pub(crate) fn from_halves(reader: H2Reader, writer: H2Writer) -> Self {
        H2Stream { reader, writer }
    }

    /// Splits into halves that can be driven from different tasks or futures.
    pub fn into_split(self) -> (H2Reader, H2Writer) {
        (self.reader, self.writer)
    }

    /// Abandons the tunnel with RST_STREAM(CANCEL): the peer sees a reset, not a clean end.
    pub fn reset(mut self) {
        self.writer.reset(Reason::CANCEL);
    }
}

impl H2Reader {
    pub(crate) fn new(recv: RecvStream, slot: Option<Arc<Slot>>) -> Self {
        H2Reader {
            recv,
            pending: Bytes::new(),
            unreleased: 0,
            _slot: slot,
        }
    }

    /// The next chunk the peer sent, without copying; `None` at END_STREAM. The flow-control
    /// window of a chunk is returned when the next one is asked for, i.e. after the caller has
    /// dealt with it.
    pub async fn next_chunk(&mut self) -> Option<io::Result<Bytes>> {
        self.release_consumed();
        if !self.pending.is_empty() {
            let chunk = std::mem::take(&mut self.pending);
            self.unreleased = chunk.len();
            return Some(Ok(chunk));
        }
        loop {
            match self.recv.data().await? {
                Ok(chunk) if chunk.is_empty() => continue,
                Ok(chunk) => {
                    self.unreleased = chunk.len();
                    return Some(Ok(chunk));
                }
                Err(e) => return Some(Err(h2_to_io(e))),
            }
        }
    }

    /// Like [`next_chunk`](Self::next_chunk), then also every further chunk that is already
    /// here, up to about `max` bytes in all, appended to `out`: one vectored write can then
    /// pass a burst of frames on. `false` at END_STREAM with nothing appended. Windows are
    /// returned on the next call.
    pub async fn next_chunks(&mut self, max: usize, out: &mut Vec<Bytes>) -> io::Result<bool> {
        self.release_consumed();
        let mut total = 0;
        if !self.pending.is_empty() {
            let chunk = std::mem::take(&mut self.pending);
            total += chunk.len();
            out.push(chunk);
        }
        let more = std::future::poll_fn(|cx| {
            while total < max {
                match self.recv.poll_data(cx) {
                    Poll::Ready(Some(Ok(chunk))) => {
                        total += chunk.len();
                        if !chunk.is_empty() {
                            out.push(chunk);
                        }
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(h2_to_io(e))),
                    Poll::Ready(None) => return Poll::Ready(Ok(!out.is_empty())),
                    Poll::Pending if out.is_empty() => return Poll::Pending,
                    Poll::Pending => break,
                }
            }
            Poll::Ready(Ok(true))
        })
        .await;
        self.unreleased = total;
        more
    }

    fn release_consumed(&mut self) {
        if self.unreleased > 0 {
            // The stream may already be closed; then there is no window left to return.
            let _ = self.recv.flow_control().release_capacity(self.unreleased);
            self.unreleased = 0;
        }
    }
}

impl H2Writer {
    pub(crate) fn new(send: SendStream<Bytes>, slot: Option<Arc<Slot>>) -> Self {
        H2Writer {
            send,
            started: false,
            finished: false,
            _slot: slot,
        }
    }

    /// Queues `chunk` for sending, waiting for flow-control capacity as needed.
    pub async fn send_chunk(&mut self, mut chunk: Bytes) -> io::Result<()> {
        if !self.started {
            self.started = true;
            // A new stream gets send capacity only once the connection task has run and sent
            // the HEADERS on their own. Queued now instead, the first bytes leave with the
            // HEADERS in one write (h2 still never sends past the window).
            if chunk.len() <= FIRST_CHUNK_MAX {
                return self.send.send_data(chunk, false).map_err(h2_to_io);
            }
        }
        while !chunk.is_empty() {
            let n = std::future::poll_fn(|cx| self.poll_capacity(cx, chunk.len())).await?;
            let part = chunk.split_to(n.min(chunk.len()));
            self.send.send_data(part, false).map_err(h2_to_io)?;
        }
        Ok(())
    }

    /// Ends our direction of the tunnel (END_STREAM); the other direction stays open.
    pub fn finish(&mut self) -> io::Result<()> {
        if !self.finished {
            self.finished = true;
            self.send.send_data(Bytes::new(), true).map_err(h2_to_io)?;
        }
        Ok(())
    }

    /// Aborts the tunnel in both directions with RST_STREAM.
    pub fn reset(&mut self, reason: Reason) {
        self.finished = true;
        self.send.send_reset(reason);
    }

    /// Waits until at least one byte of send capacity is available, up to `want`.
    fn poll_capacity(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        self.send.reserve_capacity(want);
        loop {
            let available = self.send.capacity();
            if available > 0 {
                return Poll::Ready(Ok(available));
            }
            match ready!(self.send.poll_capacity(cx)) {
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Poll::Ready(Err(h2_to_io(e))),
                None => {
                    // The stream can no longer send: find out whether the peer reset it.
                    return Poll::Ready(Err(match ready!(self.send.poll_reset(cx)) {
                        Ok(reason) => io::Error::new(
                            io::ErrorKind::ConnectionReset,
                            format!("tunnel reset by peer: {reason}"),
                        ),
                        Err(e) => h2_to_io(e),
                    }));
                }
            }
        }
    }
}

impl AsyncRead for H2Reader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.release_consumed();
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                let _ = self.recv.flow_control().release_capacity(n);
                return Poll::Ready(Ok(()));
            }
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(chunk)) => self.pending = chunk,
                Some(Err(e)) => return Poll::Ready(Err(h2_to_io(e))),
                None => return Poll::Ready(Ok(())),
            }
        }
    }
}

impl AsyncWrite for H2Writer {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = ready!(self.poll_capacity(cx, buf.len()))?.min(buf.len());
        self.send
            .send_data(Bytes::copy_from_slice(&buf[..n]), false)
            .map_err(h2_to_io)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The connection task writes queued frames out as soon as it can.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.finish())
    }
}

impl AsyncRead for H2Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.reader).poll_read(cx, buf)
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.writer).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.writer).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.writer).poll_shutdown(cx)
    }
}
