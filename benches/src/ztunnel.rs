//! ztunnel's cost, read from `/proc`: CPU time (utime + stime of the whole process) and
//! resident memory (VmRSS), and connections held open through the mesh to see what each costs.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::Context;

use crate::path::{BenchPath, IO_TIMEOUT};
use crate::report::ZtunnelCost;
use crate::servers::ECHO_PORT;

/// Pause before reading memory, so that closed connections are gone and allocations settle.
pub const SETTLE: Duration = Duration::from_secs(1);
/// Pause between the last measurement and the after-the-run reading: ztunnel returns free heap
/// to the kernel once a second, and a throughput burst leaves megabytes of it, so a reading
/// within the first second saw either side of that release by chance.
pub const AFTER_RUN: Duration = Duration::from_secs(3);

/// One ztunnel process.
#[derive(Clone, Debug)]
pub struct Ztunnel {
    pub node: String,
    pub pid: i32,
}

pub use crate::host::{cpu_split, CpuSplit};

/// Resident set size in KiB.
pub fn rss_kib(pid: i32) -> anyhow::Result<u64> {
    crate::host::status_fields_kib(pid, ["VmRSS:"]).map(|[rss]| rss)
}

/// A process's resident memory, where it is, and its peak, in KiB.
#[derive(Clone, Copy, Debug)]
pub struct Memory {
    pub rss_kib: u64,
    pub anon_kib: u64,
    pub file_kib: u64,
    pub peak_kib: u64,
}

/// Resident memory split by kind, and the peak, of every ztunnel, in node order.
pub fn memory_all(ztunnels: &[Ztunnel]) -> anyhow::Result<Vec<Memory>> {
    ztunnels
        .iter()
        .map(|z| {
            let [rss_kib, anon_kib, file_kib, peak_kib] = crate::host::status_fields_kib(
                z.pid,
                ["VmRSS:", "RssAnon:", "RssFile:", "VmHWM:"],
            )?;
            Ok(Memory {
                rss_kib,
                anon_kib,
                file_kib,
                peak_kib,
            })
        })
        .collect()
}

/// RSS of every ztunnel, in node order.
pub fn rss_all(ztunnels: &[Ztunnel]) -> anyhow::Result<Vec<u64>> {
    ztunnels.iter().map(|z| rss_kib(z.pid)).collect()
}

/// Every ztunnel's CPU time so far, user and system apart.
pub fn cpu_split_all(ztunnels: &[Ztunnel]) -> anyhow::Result<Vec<CpuSplit>> {
    ztunnels.iter().map(|z| cpu_split(z.pid)).collect()
}

/// Opens `count` connections from the mesh client to the echo server, each proven to reach
/// the server by a one-byte echo, then reads every ztunnel's RSS while all are open; closes
/// them and waits `settle` before returning.
pub fn rss_with_held_connections(
    path: &BenchPath,
    ztunnels: &[Ztunnel],
    count: usize,
    settle: Duration,
) -> anyhow::Result<Vec<u64>> {
    let addr = path.addr(ECHO_PORT);
    let conns = path.in_client(|| -> anyhow::Result<Vec<TcpStream>> {
        (0..count)
            .map(|i| {
                echoed_connection(addr)
                    .with_context(|| format!("held connection {i} of {count} to {addr}"))
            })
            .collect()
    })??;
    std::thread::sleep(settle);
    let rss = rss_all(ztunnels);
    drop(conns);
    std::thread::sleep(settle);
    rss
}

/// A connection that has carried a one-byte echo, so it reaches the server.
fn echoed_connection(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.write_all(b"h")?;
    let mut byte = [0u8; 1];
    s.read_exact(&mut byte)?;
    Ok(s)
}

/// RSS readings around two rounds of held connections, per ztunnel.
pub struct HeldRounds {
    /// Connections per round.
    pub count: usize,
    /// Before any traffic.
    pub idle: Vec<u64>,
    /// With the first round open.
    pub first: Vec<u64>,
    /// Just before the second round (after the first round's free heap went back).
    pub before_second: Vec<u64>,
    /// With the second round open.
    pub second: Vec<u64>,
}

/// Two rounds of `count` held connections over `path`. The first round also pays for what
/// stays once it is over (the pool's HBONE connections, grown tables); a second round on the
/// same ztunnels shows what one more open connection costs. Read after ztunnel has returned
/// the first round's free heap.
/// `idle`: the readings before any traffic, against which the first round counts.
pub fn held_rounds(
    path: &BenchPath,
    ztunnels: &[Ztunnel],
    count: usize,
    idle: Vec<u64>,
) -> anyhow::Result<HeldRounds> {
    let first = rss_with_held_connections(path, ztunnels, count, SETTLE)?;
    std::thread::sleep(AFTER_RUN);
    let before_second = rss_all(ztunnels)?;
    let second = rss_with_held_connections(path, ztunnels, count, SETTLE)
        .context("second round of held connections")?;
    Ok(HeldRounds {
        count,
        idle,
        first,
        before_second,
        second,
    })
}

/// What each ztunnel cost over a run: memory readings and the CPU it spent moving `bytes`.
pub fn costs(
    ztunnels: &[Ztunnel],
    held: &HeldRounds,
    after: &[Memory],
    cpu_secs: &[f64],
    bytes: u64,
) -> Vec<ZtunnelCost> {
    let idle = &held.idle;
    let per_connection =
        |held_kib: u64, before: u64| (held_kib as f64 - before as f64) / held.count as f64;
    ztunnels
        .iter()
        .enumerate()
        .map(|(i, z)| ZtunnelCost {
            node: z.node.clone(),
            pid: z.pid,
            rss_idle_kib: idle[i],
            rss_held_kib: held.first[i],
            rss_after_kib: after[i].rss_kib,
            rss_after_anon_kib: after[i].anon_kib,
            rss_after_file_kib: after[i].file_kib,
            rss_peak_kib: after[i].peak_kib,
            kib_per_connection: per_connection(held.first[i], idle[i]),
            kib_per_connection_second: per_connection(held.second[i], held.before_second[i]),
            throughput_cpu_secs: cpu_secs[i],
            cpu_secs_per_gb: cpu_secs[i] / (bytes as f64 / 1e9),
        })
        .collect()
}
