//! ztunnel's cost, read from `/proc`: CPU time (utime + stime of the whole process) and
//! resident memory (VmRSS), and connections held open through the mesh to see what each costs.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::Context;
use lab::Lab;

use crate::fixture::{BenchPath, IO_TIMEOUT};
use crate::servers::ECHO_PORT;

/// One ztunnel process.
#[derive(Clone, Debug)]
pub struct Ztunnel {
    pub node: String,
    pub pid: i32,
}

pub use crate::host::cpu_secs;

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

/// CPU seconds of every ztunnel, in node order.
pub fn cpu_all(ztunnels: &[Ztunnel]) -> anyhow::Result<Vec<f64>> {
    ztunnels.iter().map(|z| cpu_secs(z.pid)).collect()
}

/// Opens `count` connections from the mesh client to the echo server, each proven to reach
/// the server by a one-byte echo, then reads every ztunnel's RSS while all are open; closes
/// them and waits `settle` before returning.
pub fn rss_with_held_connections(
    lab: &Lab,
    path: &BenchPath,
    ztunnels: &[Ztunnel],
    count: usize,
    settle: Duration,
) -> anyhow::Result<Vec<u64>> {
    let addr = path.addr(ECHO_PORT);
    let conns = lab.run_in_pod(&path.client, || -> anyhow::Result<Vec<TcpStream>> {
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
