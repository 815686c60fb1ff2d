//! The one accept loop of every listener, TCP or unix ([`Listener`]): accept with a back-off
//! on errors, optional backpressure (a bounded number of connections at once) and descriptor
//! headroom check, one task per connection kept in a [`JoinSet`] so that drain can wait for
//! them, and drain itself.
//!
//! Drain: once the [`DrainWatch`] fires, the listener is closed (new connections are refused
//! by the kernel, not left in a queue nobody reads), then the loop waits for its connections,
//! up to the drain deadline if one is set, and aborts the rest. Dropping the loop's future
//! aborts every connection it started, so a caller that aborts the loop's task (a pod being
//! removed) ends its connections too.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::os::fd::AsRawFd;

use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::drain::DrainWatch;
use crate::limits::{check_descriptor_headroom, RefusalCounter};

/// How long the loop waits after a failed `accept` (out of descriptors, out of memory):
/// the failure persists for a while, and retrying at once would spin a core.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// A socket that hands out connections: what [`AcceptLoop::run`] accepts on.
pub trait Listener: Send + 'static {
    /// One accepted connection; a descriptor, so the headroom check can see its number.
    type Conn: AsRawFd + Send + 'static;
    /// The peer's address as this kind of socket reports it.
    type Addr: Send + 'static;

    /// The next connection (the listener's own `accept`).
    fn accept_conn(
        &self,
    ) -> impl Future<Output = std::io::Result<(Self::Conn, Self::Addr)>> + Send + '_;

    /// Disables Nagle where the socket has it (TCP); a no-op elsewhere.
    fn set_nodelay(_conn: &Self::Conn) {}
}

impl Listener for TcpListener {
    type Conn = TcpStream;
    type Addr = SocketAddr;

    fn accept_conn(
        &self,
    ) -> impl Future<Output = std::io::Result<(TcpStream, SocketAddr)>> + Send + '_ {
        TcpListener::accept(self)
    }

    fn set_nodelay(conn: &TcpStream) {
        // Best effort: a socket that refuses it still works, only slower.
        let _ = conn.set_nodelay(true);
    }
}

impl Listener for UnixListener {
    type Conn = UnixStream;
    type Addr = tokio::net::unix::SocketAddr;

    fn accept_conn(
        &self,
    ) -> impl Future<Output = std::io::Result<(UnixStream, Self::Addr)>> + Send + '_ {
        UnixListener::accept(self)
    }
}

/// How one listener accepts; build with [`AcceptLoop::new`], then [`AcceptLoop::run`].
#[derive(Debug)]
pub struct AcceptLoop {
    /// Names the listener in logs ("outbound", "admin", "HBONE").
    name: &'static str,
    /// Stop accepting when this fires; `None`: accept for the life of the process.
    drain: Option<DrainWatch>,
    /// After drain, how long connections get to finish before they are aborted; `None`:
    /// as long as they take (the caller bounds it by aborting the loop's task).
    drain_deadline: Option<Duration>,
    /// At most this many connections at once: the loop waits for a free slot before it
    /// accepts, so further clients wait in the listen queue (backpressure, not refusal).
    slots: Option<Arc<Semaphore>>,
    /// Close a new connection at once when the process is near its descriptor limit
    /// ([`check_descriptor_headroom`]), keeping the rest for established connections.
    headroom: bool,
    /// Disable Nagle on accepted sockets: a proxy's small writes must not wait for ACKs.
    nodelay: bool,
    /// Connections closed for lack of descriptor headroom (logs the 1st, 2nd, 4th, ...).
    refused: RefusalCounter,
    /// Failed `accept` calls: a listener out of descriptors fails twenty times a second, and
    /// the log says so sparingly (the 1st, 2nd, 4th, ...).
    failures: RefusalCounter,
}

impl AcceptLoop {
    /// A loop that accepts until the process ends, with no bound and no checks.
    pub fn new(name: &'static str) -> AcceptLoop {
        AcceptLoop {
            name,
            drain: None,
            drain_deadline: None,
            slots: None,
            headroom: false,
            nodelay: false,
            refused: RefusalCounter::default(),
            failures: RefusalCounter::default(),
        }
    }

    /// Stops accepting when `drain` fires, then waits for the connections.
    pub fn until(mut self, drain: DrainWatch) -> AcceptLoop {
        self.drain = Some(drain);
        self
    }

    /// After drain, aborts connections still open after `deadline`.
    pub fn drain_deadline(mut self, deadline: Duration) -> AcceptLoop {
        self.drain_deadline = Some(deadline);
        self
    }

    /// Serves at most `n` connections at once; further clients wait in the listen queue.
    pub fn max_connections(mut self, n: usize) -> AcceptLoop {
        self.slots = Some(Arc::new(Semaphore::new(n.max(1))));
        self
    }

    /// Closes a new connection at once when the process is near its descriptor limit.
    pub fn descriptor_headroom(mut self) -> AcceptLoop {
        self.headroom = true;
        self
    }

    /// Sets `TCP_NODELAY` on every accepted socket (TCP only).
    pub fn nodelay(mut self) -> AcceptLoop {
        self.nodelay = true;
        self
    }

    /// Accepts on `listener` and runs what `handle` returns for each connection in its own
    /// task; `handle` returns `None` to close the connection at once (refused by a limit of
    /// its own), which spawns nothing. Returns once drained and the connections are done.
    pub async fn run<L, F, Fut>(self, listener: L, mut handle: F)
    where
        L: Listener,
        F: FnMut(L::Conn, L::Addr) -> Option<Fut>,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut conns = JoinSet::new();
        let mut drain = self.drain.clone();
        loop {
            let slot = match &self.slots {
                None => None,
                Some(slots) => {
                    let acquire = slots.clone().acquire_owned();
                    tokio::select! {
                        permit = acquire => match permit {
                            Ok(permit) => Some(permit),
                            // Never closed; were it, nothing could be served.
                            Err(_) => break,
                        },
                        () = drained(&mut drain) => break,
                    }
                }
            };
            let accepted = tokio::select! {
                accepted = listener.accept_conn() => accepted,
                // Reaps finished connections so the set holds only open ones.
                Some(_) = conns.join_next(), if !conns.is_empty() => continue,
                () = drained(&mut drain) => break,
            };
            let (conn, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    let (n, log) = self.failures.count();
                    if log {
                        warn!(listener = self.name, failures_so_far = n, error = %e, "accept failed; backing off");
                    } else {
                        debug!(listener = self.name, error = %e, "accept failed; backing off");
                    }
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            if self.headroom && !self.has_headroom(&conn) {
                continue;
            }
            if self.nodelay {
                L::set_nodelay(&conn);
            }
            if let Some(conn) = handle(conn, peer) {
                conns.spawn(async move {
                    conn.await;
                    drop(slot);
                });
            }
        }
        drop(listener);
        self.finish(conns).await;
    }

    /// Whether a new connection leaves the descriptor headroom; logs a refusal (sparingly).
    fn has_headroom(&self, conn: &impl AsRawFd) -> bool {
        let Err(refused) = check_descriptor_headroom(self.name, conn.as_raw_fd()) else {
            return true;
        };
        let (n, log) = self.refused.count();
        if log {
            warn!(
                refused_so_far = n,
                "closing a new connection at once: {refused}"
            );
        } else {
            debug!("closing a new connection at once: {refused}");
        }
        false
    }

    /// After drain: waits for the connections (up to the deadline, if any), aborts the rest.
    async fn finish(&self, mut conns: JoinSet<()>) {
        if conns.is_empty() {
            return;
        }
        info!(listener = self.name, open = conns.len(), "draining");
        let all = async { while conns.join_next().await.is_some() {} };
        let Some(deadline) = self.drain_deadline else {
            return all.await;
        };
        if tokio::time::timeout(deadline, all).await.is_err() {
            warn!(
                listener = self.name,
                open = conns.len(),
                "drain deadline passed; closing the remaining connections"
            );
            conns.shutdown().await;
        }
    }
}

/// Resolves when `drain` fires; never without one.
async fn drained(drain: &mut Option<DrainWatch>) {
    match drain {
        Some(d) => d.signaled().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
