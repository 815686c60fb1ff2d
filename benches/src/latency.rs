//! Request/response latency: on one kept connection to the echo server, write `size` bytes
//! and read them back, one exchange at a time; percentiles over the timed exchanges.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use crate::path::{BenchPath, IO_TIMEOUT};
use crate::servers::ECHO_PORT;
use crate::stats::{micros, percentile};

/// Untimed exchanges first: the connection (and, in the mesh, its tunnel) warms up.
const WARMUP: usize = 200;

/// One latency run, in microseconds.
#[derive(Clone, Debug, Serialize)]
pub struct LatencyRun {
    pub exchanges: usize,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
}

pub fn run(
    path: &BenchPath,
    size: usize,
    count: usize,
    max: Duration,
) -> anyhow::Result<LatencyRun> {
    let addr = path.addr(ECHO_PORT);
    let mut samples = path.in_client(|| -> anyhow::Result<_> {
        let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
            .with_context(|| format!("connecting to the echo server {addr}"))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
        let request = vec![0x42_u8; size];
        let mut response = vec![0u8; size];
        let mut exchange = |s: &mut TcpStream| -> anyhow::Result<Duration> {
            let t0 = Instant::now();
            s.write_all(&request)?;
            s.read_exact(&mut response)?;
            Ok(t0.elapsed())
        };
        for _ in 0..WARMUP {
            exchange(&mut s).context("warm-up exchange")?;
        }
        let mut samples = Vec::with_capacity(count);
        let deadline = Instant::now() + max;
        while samples.len() < count && Instant::now() < deadline {
            samples.push(exchange(&mut s).context("request/response exchange")?);
        }
        s.shutdown(Shutdown::Write)?;
        Ok(samples)
    })??;
    Ok(LatencyRun {
        exchanges: samples.len(),
        p50_us: micros(percentile(&mut samples, 50.0)),
        p90_us: micros(percentile(&mut samples, 90.0)),
        p99_us: micros(percentile(&mut samples, 99.0)),
    })
}
