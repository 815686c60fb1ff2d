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

/// CPU seconds used so far (user + system, all threads).
pub fn cpu_secs(pid: i32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat (did ztunnel exit?)"))?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line; `rest` starts at field 3.
    let ticks = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i - 3)
            .context("short /proc/PID/stat")?
            .parse()
            .context("utime/stime not a number")
    };
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((ticks(14)? + ticks(15)?) as f64 / hz)
}

/// Resident set size in KiB.
pub fn rss_kib(pid: i32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status (did ztunnel exit?)"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/PID/status")
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
