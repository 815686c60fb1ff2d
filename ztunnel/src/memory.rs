//! How ztunnel uses the C allocator (glibc malloc): steady during bursts, lean after them.
//!
//! Left to its own heuristics, glibc gives buffers above a moving threshold (128 KiB at first)
//! mappings of their own, so relay buffers of up to 256 KiB could cost a page fault per 4 KiB moved
//! (seen: 200,000 faults per GB). Instead the threshold is fixed above any buffer of the data path,
//! and `free` never gives memory back by itself (a receiver's queued frames come and go by
//! megabytes; trimming each time refaulted them, 150,000 faults per GB). A `malloc_trim` every
//! second returns every free page once a burst is over: a throughput burst leaves 5–15 MiB of free
//! heap behind, and with a 5 s period what a reader of RSS saw in the seconds after a burst was
//! mostly chance. During a burst it costs a refault of the pages it released, a few thousand faults
//! per second (perf: 0.3 % of ztunnel's CPU samples in a throughput run). All threads share the
//! main heap: `malloc_trim` cannot shrink the top of a thread's own heap, and with a handful of
//! threads, mostly served by glibc's per-thread caches, one heap costs no contention worth
//! measuring.
//!
//! The static musl build of the container image (`scripts/images.sh`) allocates with mimalloc
//! (main.rs says why). mimalloc keeps the pages a burst freed until an allocation call gets
//! round to purging them, which an idle ztunnel never makes: after a throughput run it held
//! 20-30 MiB of free heap. There the same one-second tick runs `mi_collect(true)`, which frees
//! the calling thread's empty pages and purges every free page of the process; `configure`
//! does nothing there.

use std::time::Duration;

/// Allocations above this get their own mapping (glibc's default starts at 128 KiB and grows).
#[cfg_attr(not(all(target_os = "linux", target_env = "gnu")), allow(dead_code))]
const MMAP_THRESHOLD: i32 = 4 << 20;
/// Free memory at the top of the heap that `free` leaves alone (glibc: 128 KiB, also moving).
#[cfg_attr(not(all(target_os = "linux", target_env = "gnu")), allow(dead_code))]
const TRIM_THRESHOLD: i32 = 64 << 20;
/// How often free pages go back to the kernel.
const RELEASE_EVERY: Duration = Duration::from_secs(1);

/// Sets the allocator's thresholds; call once at startup, before the data path runs.
pub fn configure() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before other threads allocate.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Returns free heap pages to the kernel every `RELEASE_EVERY`, for ever. Cheap when there
/// is little to return: it walks the free lists of the one arena.
pub async fn release_free_memory() {
    let mut tick = tokio::time::interval(RELEASE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only works on the allocator's own free lists.
        unsafe {
            libc::malloc_trim(0);
        }
        #[cfg(target_env = "musl")]
        // SAFETY: mi_collect only works on mimalloc's own free pages, from any thread.
        unsafe {
            libmimalloc_sys::mi_collect(true);
        }
    }
}
