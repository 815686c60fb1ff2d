//! [`Interner`]: one shared value per key (a metric label set and its counters, an HBONE
//! pool key and its connections), found without a lock shared by every connection.
//!
//! Keys are spread over shards by their hash, each behind its own reader-writer lock, so
//! connections with the same labels only share a read lock and connections with different
//! labels rarely touch the same shard; the write lock is taken only the first time a key is
//! seen. The key is hashed once: the shard and the shard's table use the same hash.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::sync::Arc;

use parking_lot::RwLock;

/// Enough shards that a node's worker threads rarely meet on one.
const SHARDS: usize = 16;

/// One shard's table, keyed by the hash already computed.
type Shard<K, V> = HashMap<Hashed<K>, Arc<V>, BuildHasherDefault<PassThrough>>;

/// Hands out one `Arc<V>` per key, creating it the first time the key is asked for.
/// Entries stay until [`Interner::retain`] drops them (metric label sets never are: they grow
/// as metric families do).
pub struct Interner<K, V> {
    shards: [RwLock<Shard<K, V>>; SHARDS],
    hasher: RandomState,
}

impl<K: Hash + Eq, V> std::fmt::Debug for Interner<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interner")
            .field("len", &self.len())
            .finish()
    }
}

impl<K: Hash + Eq, V> Default for Interner<K, V> {
    fn default() -> Self {
        Interner::new()
    }
}

impl<K: Hash + Eq, V> Interner<K, V> {
    pub fn new() -> Self {
        Interner {
            shards: std::array::from_fn(|_| RwLock::new(HashMap::default())),
            hasher: RandomState::new(),
        }
    }

    /// The value for `key`, made by `make` if this is the first time `key` is asked for.
    /// `make` runs under the shard's write lock, so it runs once per key: keep it short.
    pub fn get_or_insert_with(&self, key: K, make: impl FnOnce(&K) -> V) -> Arc<V> {
        let hashed = Hashed {
            hash: self.hasher.hash_one(&key),
            key,
        };
        let shard = &self.shards[shard_of(hashed.hash)];
        if let Some(v) = shard.read().get(&hashed) {
            return v.clone();
        }
        let mut map = shard.write();
        // Another thread may have inserted it between the two locks.
        if let Some(v) = map.get(&hashed) {
            return v.clone();
        }
        let value = Arc::new(make(&hashed.key));
        map.insert(hashed, value.clone());
        value
    }

    /// Keys interned so far.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Calls `f` with every entry, holding one shard's read lock at a time.
    pub fn for_each(&self, mut f: impl FnMut(&K, &Arc<V>)) {
        for shard in &self.shards {
            for (hashed, value) in shard.read().iter() {
                f(&hashed.key, value);
            }
        }
    }

    /// Keeps only the entries for which `keep` returns true, holding one shard's write lock
    /// at a time (so lookups in the other shards go on meanwhile).
    pub fn retain(&self, mut keep: impl FnMut(&K, &Arc<V>) -> bool) {
        for shard in &self.shards {
            shard
                .write()
                .retain(|hashed, value| keep(&hashed.key, value));
        }
    }
}

/// The shard of a hash: bits the shard's table does not use (it takes the low bits for the
/// bucket and the top seven as a tag), so keys of one shard still spread over its buckets.
fn shard_of(hash: u64) -> usize {
    (hash >> 32) as usize % SHARDS
}

/// A key with its hash, so the shard's table does not hash the key again.
struct Hashed<K> {
    hash: u64,
    key: K,
}

impl<K> Hash for Hashed<K> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl<K: PartialEq> PartialEq for Hashed<K> {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && self.key == other.key
    }
}

impl<K: Eq> Eq for Hashed<K> {}

/// A hasher that returns the `u64` written to it: the hash computed by [`Interner`].
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `Hashed` is hashed with this hasher, and it writes one u64; fold anything
        // else in rather than drop it, so a misuse costs speed, never correctness.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn one_value_per_key() {
        let interner: Interner<String, usize> = Interner::new();
        let made = AtomicUsize::new(0);
        let make = |_: &String| made.fetch_add(1, Ordering::SeqCst);
        let a = interner.get_or_insert_with("a".to_string(), make);
        let a2 = interner.get_or_insert_with("a".to_string(), make);
        let b = interner.get_or_insert_with("b".to_string(), make);
        assert!(Arc::ptr_eq(&a, &a2));
        assert!(!Arc::ptr_eq(&a, &b));
        assert_eq!(made.load(Ordering::SeqCst), 2);
        assert_eq!(interner.len(), 2);
    }

    #[test]
    fn retain_drops_entries_and_a_later_lookup_makes_a_fresh_value() {
        let interner: Interner<u32, u32> = Interner::new();
        for key in 0..100 {
            interner.get_or_insert_with(key, |k| k * 10);
        }
        let kept_before = interner.get_or_insert_with(2, |_| unreachable!("2 is interned"));
        interner.retain(|key, _| key % 2 == 0);
        assert_eq!(interner.len(), 50);
        let mut seen = Vec::new();
        interner.for_each(|key, value| {
            assert_eq!(**value, key * 10);
            seen.push(*key);
        });
        seen.sort_unstable();
        assert_eq!(seen, (0..100).step_by(2).collect::<Vec<_>>());
        // A kept key still maps to the very same value; a dropped one is made again.
        assert!(Arc::ptr_eq(
            &kept_before,
            &interner.get_or_insert_with(2, |_| unreachable!("2 was kept"))
        ));
        assert_eq!(*interner.get_or_insert_with(3, |_| 7), 7);
    }

    #[test]
    fn threads_racing_on_a_key_share_one_value() {
        let interner: Arc<Interner<u32, AtomicUsize>> = Arc::new(Interner::new());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let interner = interner.clone();
                std::thread::spawn(move || {
                    for key in 0..1000u32 {
                        interner
                            .get_or_insert_with(key, |_| AtomicUsize::new(0))
                            .fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(interner.len(), 1000);
        for key in 0..1000u32 {
            let v = interner.get_or_insert_with(key, |_| AtomicUsize::new(99));
            assert_eq!(v.load(Ordering::Relaxed), 8, "key {key}");
        }
    }
}
