//! Connection rate: connect, echo one byte, close, as fast as possible, from one thread
//! (serial) or several; connections per second and the time each took (setup).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::path::{BenchPath, IO_TIMEOUT};
use crate::servers::CONNECT_PORT;
use crate::stats::{micros, percentile};

/// One connection-rate run.
#[derive(Clone, Debug, Serialize)]
pub struct ConnRun {
    pub threads: usize,
    /// Connections that completed their echo.
    pub connections: usize,
    /// Connections that failed (they count against the rate: their time is spent).
    pub errors: usize,
    /// What the first failure was, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    pub per_s: f64,
    /// Time of one connect + 1-byte echo + close.
    pub setup_p50_us: f64,
    pub setup_p99_us: f64,
}

/// `total` connections over `threads` threads, stopping early at `max`.
pub fn run(
    path: &BenchPath,
    threads: usize,
    total: usize,
    max: Duration,
) -> anyhow::Result<ConnRun> {
    let addr = path.addr(CONNECT_PORT);
    let per_thread = total.div_ceil(threads);
    let (mut samples, errors, first_error, elapsed) = path.in_client(|| {
        let deadline = Instant::now() + max;
        let start = Instant::now();
        // Threads spawned here inherit the client's netns.
        let results: Vec<Outcome> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|_| scope.spawn(move || connect_loop(addr, per_thread, deadline)))
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().unwrap_or_default())
                .collect()
        });
        let elapsed = start.elapsed();
        let errors = results.iter().map(|o| o.errors).sum::<usize>();
        let first_error = results.iter().find_map(|o| o.first_error.clone());
        let samples: Vec<Duration> = results.into_iter().flat_map(|o| o.samples).collect();
        (samples, errors, first_error, elapsed)
    })?;
    if samples.is_empty() {
        anyhow::bail!(
            "{} path: all {errors} connections to {addr} failed: {}",
            path.name,
            first_error.unwrap_or_default()
        );
    }
    Ok(ConnRun {
        threads,
        connections: samples.len(),
        errors,
        first_error,
        per_s: samples.len() as f64 / elapsed.as_secs_f64(),
        setup_p50_us: micros(percentile(&mut samples, 50.0)),
        setup_p99_us: micros(percentile(&mut samples, 99.0)),
    })
}

/// What one thread's connections did.
#[derive(Default)]
struct Outcome {
    /// Durations of the connections that succeeded.
    samples: Vec<Duration>,
    errors: usize,
    first_error: Option<String>,
}

/// Up to `count` connections, none started after `deadline`.
fn connect_loop(addr: SocketAddr, count: usize, deadline: Instant) -> Outcome {
    let mut out = Outcome {
        samples: Vec::with_capacity(count),
        ..Outcome::default()
    };
    for _ in 0..count {
        if Instant::now() >= deadline {
            break;
        }
        let t0 = Instant::now();
        match one(addr) {
            Ok(()) => out.samples.push(t0.elapsed()),
            Err(e) => {
                out.errors += 1;
                out.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    out
}

/// Connect, send one byte, read it back, close.
fn one(addr: SocketAddr) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.write_all(b"x")?;
    let mut byte = [0u8; 1];
    s.read_exact(&mut byte)?;
    Ok(())
}
