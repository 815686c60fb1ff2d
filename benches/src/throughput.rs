//! Throughput: `streams` connections from the client pod write to the sink for a fixed time;
//! each then half-closes and waits for the sink's count of bytes received, so the figure is
//! what arrived at the server, including whatever was still buffered on the way.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use crate::path::{BenchPath, IO_TIMEOUT};
use crate::servers::SINK_PORT;

/// One throughput run.
#[derive(Clone, Debug, Serialize)]
pub struct ThroughputRun {
    pub streams: usize,
    /// Bytes the sink received, over all streams.
    pub bytes: u64,
    /// From the common start until the last stream's count came back.
    pub secs: f64,
    pub gbit_per_s: f64,
}

pub fn run(
    path: &BenchPath,
    streams: usize,
    duration: Duration,
    write_size: usize,
) -> anyhow::Result<ThroughputRun> {
    let addr = path.addr(SINK_PORT);
    // Inside the client's netns: threads spawned here inherit it.
    let results = path.in_client(|| -> anyhow::Result<_> {
        let conns = (0..streams)
            .map(|_| {
                let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
                s.set_write_timeout(Some(IO_TIMEOUT))?;
                s.set_read_timeout(Some(IO_TIMEOUT))?;
                Ok(s)
            })
            .collect::<std::io::Result<Vec<_>>>()
            .with_context(|| format!("connecting to the sink {addr}"))?;
        let start_line = Barrier::new(streams + 1);
        std::thread::scope(|scope| {
            let workers: Vec<_> = conns
                .into_iter()
                .map(|s| {
                    let start_line = &start_line;
                    scope.spawn(move || {
                        start_line.wait();
                        send_for(s, duration, write_size)
                    })
                })
                .collect();
            start_line.wait();
            let start = Instant::now();
            let mut bytes = 0;
            for w in workers {
                bytes += w
                    .join()
                    .map_err(|_| anyhow::anyhow!("throughput stream panicked"))??;
            }
            Ok((bytes, start.elapsed()))
        })
    })??;
    let (bytes, elapsed) = results;
    if bytes == 0 {
        bail!("{} path: the sink received nothing", path.name);
    }
    let secs = elapsed.as_secs_f64();
    Ok(ThroughputRun {
        streams,
        bytes,
        secs,
        gbit_per_s: bytes as f64 * 8.0 / secs / 1e9,
    })
}

/// Writes for `duration`, half-closes and returns the sink's count of bytes received.
fn send_for(mut s: TcpStream, duration: Duration, write_size: usize) -> anyhow::Result<u64> {
    let buf = vec![0x5a_u8; write_size];
    let deadline = Instant::now() + duration;
    while Instant::now() < deadline {
        s.write_all(&buf).context("writing to the sink")?;
    }
    s.shutdown(Shutdown::Write)?;
    let mut count = [0u8; 8];
    s.read_exact(&mut count)
        .context("reading the sink's byte count")?;
    Ok(u64::from_le_bytes(count))
}
