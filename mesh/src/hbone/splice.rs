//! Relaying between two TCP connections (passthrough, plaintext inbound, same-pod) without
//! copying the bytes through user space: `splice(2)` moves them socket → pipe → socket.
//!
//! The semantics are those of [`relay`](super::relay()): a FIN passes on as a FIN in that
//! direction only, after every byte before it; a reset or error on either side aborts both
//! with RST; both sockets are armed with SO_LINGER 0 for the transfer ([`abort_on_close`]),
//! so a proxy that dies resets them.
//!
//! Each direction gets its own pipe, made when its first bytes arrive (an idle connection has
//! none) and kept until the relay ends: making one costs a system call and two descriptors,
//! a quiet pipe costs no memory of the process. Bytes are moved in, then the
//! pipe is emptied before anything more is read, so the pipe is empty whenever the relay
//! waits for the source: an EAGAIN from the source is always the socket's (never a full pipe),
//! and a direction that stops is never holding bytes.
//!
//! tokio's readiness drives both ends; it is only cleared by an EAGAIN, so after a short
//! `splice` (the socket was probably drained) a one-byte `MSG_PEEK` asks whether more is
//! waiting: its EAGAIN puts the task to sleep for the price of one cheap call, where a second
//! `splice` would need a pipe round. The same peek checks every answer of "nothing" or "end"
//! from `splice`: a socket whose bytes `splice` cannot reach (the receive queue stopped at
//! urgent data, or bytes delivered by a SOCKMAP program into a queue of their own) would
//! otherwise stall with its data unread, or end early. Such a direction, and any where the
//! kernel refuses `splice` (EINVAL, ENOSYS) or no pipe can be made, continues with a plain
//! copy through a buffer.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;

use super::relay::{abort_on_close, close_gracefully, RelayError, RelayStats};

/// What a pipe grows to once a splice fills half of the default one (64 KiB): bulk moves more
/// per call, up to what a socket usually has queued under load, while a chatty connection
/// keeps the default (one call less, and less of the per-user pipe allowance). The kernel may
/// refuse to grow it (`fs.pipe-max-size`, or an unprivileged user past
/// `fs.pipe-user-pages-soft`); the smaller pipe still works.
const PIPE_SIZE: usize = 512 << 10;
/// A splice that moved this much is bulk: grow the pipe.
const GROW_AT: usize = 32 << 10;
/// The buffer of a direction that copies instead.
const COPY_BUF: usize = 16 << 10;

/// Copies between two TCP connections with the same semantics as [`relay`](super::relay()):
/// FIN passes on as FIN, and a reset or error on one side aborts the other with RST. `sent`
/// counts bytes from `downstream` written to `upstream`, `received` the other way.
pub async fn relay_tcp(mut downstream: TcpStream, mut upstream: TcpStream) -> RelayStats {
    abort_on_close(&downstream);
    abort_on_close(&upstream);
    let mut stats = RelayStats::default();
    let result = {
        let (mut dr, mut dw) = downstream.split();
        let (mut ur, mut uw) = upstream.split();
        let up = one_way(
            &mut dr,
            &mut uw,
            &mut stats.sent,
            RelayError::Downstream,
            RelayError::Upstream,
        );
        let down = one_way(
            &mut ur,
            &mut dw,
            &mut stats.received,
            RelayError::Upstream,
            RelayError::Downstream,
        );
        tokio::try_join!(up, down)
    };
    if let Err(e) = result {
        // Whichever side failed, abort both so neither mistakes the end for a clean close.
        for s in [&downstream, &upstream] {
            abort_on_close(s);
        }
        stats.error = Some(e);
    }
    stats
}

/// What one `splice` from the source socket found.
enum Fill {
    /// Bytes now in the pipe.
    Moved(usize),
    /// The source ended cleanly and nothing is left to read.
    End,
    /// Bytes are waiting that `splice` cannot move: copy them instead.
    Unspliceable,
}

/// One direction: `from` into `to` until `from` ends, through a pipe while the kernel allows.
async fn one_way(
    from: &mut ReadHalf<'_>,
    to: &mut WriteHalf<'_>,
    count: &mut u64,
    read_err: fn(io::Error) -> RelayError,
    write_err: fn(io::Error) -> RelayError,
) -> Result<(), RelayError> {
    let mut pipe: Option<Pipe> = None;
    // Ask with a peek whether bytes wait before splicing: after a short splice (the socket
    // was probably drained), and before the first (tokio reports a new socket readable before
    // epoll has said so; the pipe is made for bytes that are there).
    let mut probe = true;
    loop {
        let src = from.as_ref();
        src.readable().await.map_err(read_err)?;
        if probe {
            probe = false;
            // EAGAIN here clears readiness and the next round sleeps; an error is left for
            // the splice to report.
            match src.try_io(Interest::READABLE, || peek(src)) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                _ => {}
            }
        }
        let pipe = match &mut pipe {
            Some(p) => p,
            None => match Pipe::new() {
                Ok(p) => pipe.insert(p),
                // Out of descriptors or of pipe memory: copying still works.
                Err(_) => return copy(from, to, count, read_err, write_err).await,
            },
        };
        let filled = src.try_io(Interest::READABLE, || pipe.fill(src, *count == 0));
        match filled {
            Ok(Fill::Moved(n)) => {
                probe = n < PIPE_SIZE;
                if n >= GROW_AT {
                    pipe.grow();
                }
                if !pipe.drain(to, count).await.map_err(write_err)? {
                    return copy(from, to, count, read_err, write_err).await;
                }
            }
            Ok(Fill::End) => {
                // Nothing is left in the pipe: pass the FIN on (see [`close_gracefully`]).
                close_gracefully(to.as_ref());
                return to.shutdown().await.map_err(write_err);
            }
            Ok(Fill::Unspliceable) => return copy(from, to, count, read_err, write_err).await,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(read_err(e)),
        }
    }
}

/// One direction through a user-space buffer: where `splice` cannot be used.
async fn copy(
    from: &mut ReadHalf<'_>,
    to: &mut WriteHalf<'_>,
    count: &mut u64,
    read_err: fn(io::Error) -> RelayError,
    write_err: fn(io::Error) -> RelayError,
) -> Result<(), RelayError> {
    let mut buf = vec![0u8; COPY_BUF];
    loop {
        let n = from.read(&mut buf).await.map_err(read_err)?;
        if n == 0 {
            close_gracefully(to.as_ref());
            return to.shutdown().await.map_err(write_err);
        }
        to.write_all(&buf[..n]).await.map_err(write_err)?;
        *count += n as u64;
    }
}

/// A pipe and how many bytes it holds.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    held: usize,
    /// Growing was tried (once: a refusal stays a refusal).
    grown: bool,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        Ok(Pipe {
            read,
            write,
            held: 0,
            grown: false,
        })
    }

    fn grow(&mut self) {
        if !self.grown {
            self.grown = true;
            // Best effort: a refused size leaves the default, which is only slower.
            let _ = fcntl(&self.write, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE as i32));
        }
    }

    /// Moves what `src` has queued into the (empty) pipe. `first`: nothing has moved in this
    /// direction yet, so a refusal of `splice` itself can still fall back to copying.
    fn fill(&mut self, src: &TcpStream, first: bool) -> io::Result<Fill> {
        debug_assert_eq!(self.held, 0);
        match splice(src.as_raw_fd(), self.write.as_raw_fd(), PIPE_SIZE) {
            Ok(0) if peek(src).is_ok_and(|n| n > 0) => Ok(Fill::Unspliceable),
            Ok(0) => Ok(Fill::End),
            Ok(n) => {
                self.held = n;
                Ok(Fill::Moved(n))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if peek(src).is_ok_and(|n| n > 0) {
                    Ok(Fill::Unspliceable)
                } else {
                    Err(e)
                }
            }
            Err(e) if first && unsupported(&e) => Ok(Fill::Unspliceable),
            Err(e) => Err(e),
        }
    }

    /// Empties the pipe into `to`, counting what was written. `Ok(false)`: the kernel would
    /// not splice into `to`; the bytes were written by copying and the caller copies from now on.
    async fn drain(&mut self, to: &mut WriteHalf<'_>, count: &mut u64) -> io::Result<bool> {
        let dst = to.as_ref();
        while self.held > 0 {
            dst.writable().await?;
            let read = self.read.as_raw_fd();
            match dst.try_io(Interest::WRITABLE, || {
                splice(read, dst.as_raw_fd(), self.held)
            }) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.held -= n;
                    *count += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if *count == 0 && unsupported(&e) => {
                    let bytes = self.take()?;
                    to.write_all(&bytes).await?;
                    *count += bytes.len() as u64;
                    return Ok(false);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Reads the bytes the pipe holds into memory (they are all there: nothing waits on it).
    fn take(&mut self) -> io::Result<Vec<u8>> {
        let mut bytes = vec![0u8; self.held];
        let mut at = 0;
        while at < bytes.len() {
            match nix::unistd::read(self.read.as_fd(), &mut bytes[at..])? {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                n => at += n,
            }
        }
        self.held = 0;
        Ok(bytes)
    }
}

/// `splice(2)` of up to `len` bytes from `from` to `to`, never waiting.
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    let flags = libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK;
    // SAFETY: both descriptors are open for the duration of the call (borrowed from live
    // sockets and pipes), no offsets are passed (both ends are streams), and splice touches
    // no memory of this process.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            flags,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Whether `sock` has a byte to read, without taking it: `Ok(0)` at the end of the stream.
fn peek(sock: &TcpStream) -> io::Result<usize> {
    let mut byte = [std::mem::MaybeUninit::<u8>::uninit()];
    // The socket is non-blocking (tokio's): an empty queue is EAGAIN.
    socket2::SockRef::from(sock).peek(&mut byte)
}

/// `splice` itself is not available for this pair of descriptors.
fn unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS))
}
