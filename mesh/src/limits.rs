//! Bounds on the work a peer can make a proxy do before it has proven anything: connections
//! per source address and in total, and headroom in the process's file descriptors, so that
//! one abusive client exhausts its own share and nobody else's.
//!
//! A [`SourceLimits`] hands out a [`Permit`] per admitted connection; dropping the permit gives
//! the slot back. Counts are kept in shards keyed by the source address, so admitting a
//! connection never takes a lock shared by every source.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

const SHARDS: usize = 16;

/// Per-source and total limits on one kind of connection.
#[derive(Debug)]
pub struct SourceLimits {
    /// What the limits are for, in refusal messages ("pending HBONE handshakes").
    what: &'static str,
    per_source: usize,
    total: usize,
    in_use: AtomicUsize,
    shards: [Mutex<HashMap<IpAddr, usize>>; SHARDS],
    hasher: std::collections::hash_map::RandomState,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("{what}: {peer} already has {limit} (the limit per source)")]
    PerSource {
        what: &'static str,
        peer: IpAddr,
        limit: usize,
    },
    #[error("{what}: {limit} in all (the limit for every source together)")]
    Total { what: &'static str, limit: usize },
    #[error("{what}: the process is close to its file descriptor limit ({limit}); the rest is kept for established connections")]
    Descriptors { what: &'static str, limit: u64 },
}

impl SourceLimits {
    /// At most `per_source` connections from one address and `total` from all together.
    pub fn new(what: &'static str, per_source: usize, total: usize) -> Arc<SourceLimits> {
        Arc::new(SourceLimits {
            what,
            per_source: per_source.max(1),
            total: total.max(1),
            in_use: AtomicUsize::new(0),
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            hasher: Default::default(),
        })
    }

    /// Admits one more connection from `source`, or says why not.
    pub fn try_acquire(self: &Arc<Self>, source: IpAddr) -> Result<Permit, Refused> {
        // Reserve a slot of the total first: a refused source then gives it straight back.
        let before = self.in_use.fetch_add(1, Ordering::AcqRel);
        if before >= self.total {
            self.in_use.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::Total {
                what: self.what,
                limit: self.total,
            });
        }
        let mut shard = self.shard(source).lock();
        let count = shard.entry(source).or_insert(0);
        if *count >= self.per_source {
            drop(shard);
            self.in_use.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::PerSource {
                what: self.what,
                peer: source,
                limit: self.per_source,
            });
        }
        *count += 1;
        Ok(Permit {
            limits: self.clone(),
            source,
        })
    }

    /// Admits a connection just accepted as descriptor `fd` from `source`: only while the
    /// process keeps its descriptor headroom ([`check_descriptor_headroom`]) and the limits
    /// have room.
    pub fn admit(self: &Arc<Self>, fd: i32, source: IpAddr) -> Result<Permit, Refused> {
        check_descriptor_headroom(self.what, fd)?;
        self.try_acquire(source)
    }

    /// Connections admitted and not yet released.
    pub fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Acquire)
    }

    /// Connections admitted from `source` and not yet released.
    pub fn in_use_by(&self, source: IpAddr) -> usize {
        self.shard(source).lock().get(&source).copied().unwrap_or(0)
    }

    fn shard(&self, source: IpAddr) -> &Mutex<HashMap<IpAddr, usize>> {
        &self.shards[self.hasher.hash_one(source) as usize % SHARDS]
    }

    fn release(&self, source: IpAddr) {
        let mut shard = self.shard(source).lock();
        if let Some(count) = shard.get_mut(&source) {
            *count -= 1;
            if *count == 0 {
                // Sources come and go: keep only the ones that hold something.
                shard.remove(&source);
            }
        }
        drop(shard);
        self.in_use.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One admitted connection; the slot is freed when this is dropped.
#[derive(Debug)]
pub struct Permit {
    limits: Arc<SourceLimits>,
    source: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.limits.release(self.source);
    }
}

/// Counts refusals and says which to log (the 1st, 2nd, 4th, 8th, ...), so a flood of
/// refused connections cannot flood the log as well.
#[derive(Debug, Default)]
pub struct RefusalCounter(AtomicU64);

impl RefusalCounter {
    /// Counts one refusal; returns the count so far and whether this one is worth a log line.
    pub fn count(&self) -> (u64, bool) {
        let n = self.0.fetch_add(1, Ordering::Relaxed) + 1;
        (n, n.is_power_of_two())
    }
}

/// The descriptor above which new unauthenticated work is refused (0: no check).
static FD_CEILING: AtomicUsize = AtomicUsize::new(0);

/// Raises the soft `RLIMIT_NOFILE` as far as it goes (the hard limit, or the kernel's
/// `nr_open` where the process may raise the hard limit too), and keeps a tenth of it (at
/// least 1,024) as headroom that only established connections may use; see
/// [`check_descriptor_headroom`]. Returns the limit now in force.
pub fn raise_fd_limit() -> std::io::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(hard);
    // With CAP_SYS_RESOURCE the hard limit itself may go up to nr_open; without, it stays.
    let wanted = nr_open.clamp(hard, 1 << 20);
    let limit = if wanted > hard && setrlimit(Resource::RLIMIT_NOFILE, wanted, wanted).is_ok() {
        wanted
    } else if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
        hard
    } else {
        soft
    };
    let reserve = (limit / 10).max(1024);
    FD_CEILING.store(limit.saturating_sub(reserve) as usize, Ordering::Release);
    Ok(limit)
}

/// Checks that a newly accepted descriptor leaves the headroom [`raise_fd_limit`] keeps.
/// Descriptors are allocated lowest-first, so a descriptor's number is at most the number
/// open: a number above the ceiling means the process is near its limit.
pub fn check_descriptor_headroom(what: &'static str, fd: i32) -> Result<(), Refused> {
    let ceiling = FD_CEILING.load(Ordering::Acquire);
    if ceiling != 0 && usize::try_from(fd).is_ok_and(|fd| fd >= ceiling) {
        return Err(Refused::Descriptors {
            what,
            limit: ceiling as u64,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn per_source_limit_leaves_other_sources_alone() {
        let limits = SourceLimits::new("test", 2, 10);
        let a1 = limits.try_acquire(ip(1)).unwrap();
        let _a2 = limits.try_acquire(ip(1)).unwrap();
        assert!(matches!(
            limits.try_acquire(ip(1)),
            Err(Refused::PerSource { limit: 2, .. })
        ));
        // Another source still gets in.
        let _b = limits.try_acquire(ip(2)).unwrap();
        assert_eq!(limits.in_use(), 3);
        assert_eq!(limits.in_use_by(ip(1)), 2);
        // A released slot is usable again.
        drop(a1);
        let _a3 = limits.try_acquire(ip(1)).unwrap();
        assert_eq!(limits.in_use(), 3);
    }

    #[test]
    fn total_limit_and_release() {
        let limits = SourceLimits::new("test", 100, 3);
        let held: Vec<_> = (1..=3)
            .map(|i| limits.try_acquire(ip(i)).unwrap())
            .collect();
        assert!(matches!(
            limits.try_acquire(ip(9)),
            Err(Refused::Total { limit: 3, .. })
        ));
        // A refusal takes nothing.
        assert_eq!(limits.in_use(), 3);
        drop(held);
        assert_eq!(limits.in_use(), 0);
        assert_eq!(limits.in_use_by(ip(1)), 0);
        assert!(limits.try_acquire(ip(9)).is_ok());
    }

    #[test]
    fn refusals_say_what_and_why() {
        let limits = SourceLimits::new("pending HBONE handshakes", 1, 5);
        let _p = limits.try_acquire(ip(1)).unwrap();
        let e = limits.try_acquire(ip(1)).unwrap_err().to_string();
        assert!(e.contains("pending HBONE handshakes"), "{e}");
        assert!(e.contains("10.0.0.1"), "{e}");
    }
}
