//! A pooled HBONE connection and the [`Slot`] a tunnel holds on it: the pool hands slots
//! out, the tunnel's stream halves keep theirs until dropped. Apart from both, so the pool
//! and the streams depend on this module and not on each other.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::time::Instant;

use bytes::Bytes;
use h2::client::SendRequest;
use parking_lot::Mutex;

/// One HTTP/2 connection of the pool.
pub(super) struct PooledConn {
    pub(super) sender: SendRequest<Bytes>,
    /// Tunnels currently using this connection.
    pub(super) active: AtomicUsize,
    /// When `active` last dropped to zero.
    pub(super) idle_since: Mutex<Instant>,
    /// Set by the connection task when the connection has ended, or by us on a send failure.
    pub(super) closed: Arc<AtomicBool>,
}

/// A reserved stream on a pooled connection; released when the tunnel is dropped.
pub(crate) struct Slot(Arc<PooledConn>);

impl Drop for Slot {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self.0.idle_since.lock() = Instant::now();
        }
    }
}

impl Slot {
    /// Marks the slot's connection dead, so no further tunnel picks it.
    pub(super) fn mark_closed(&self) {
        self.0.closed.store(true, Ordering::Release);
    }
}

impl PooledConn {
    pub(super) fn usable(&self) -> bool {
        !self.closed.load(Ordering::Acquire)
    }

    /// A slot on this connection, unless it is closed or already carries `limit` tunnels.
    pub(super) fn try_reserve(self: &Arc<Self>, limit: usize) -> Option<Slot> {
        if !self.usable() {
            return None;
        }
        self.active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(self.clone()))
    }
}
