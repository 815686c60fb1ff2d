//! The HTTP load generator: a fixed number of requests in flight (HTTP/1.1: one kept-alive
//! connection per request in flight; HTTP/2: one connection, that many concurrent streams),
//! each `GET` answered with a body of a known size, until a request count or a deadline. Runs
//! on a single-threaded runtime on the calling thread, so that every socket is created in the
//! netns that thread is in (the client pod's, see `Lab::run_in_pod`).
//!
//! The first `warmup` of the run is not measured: connections, tunnels and pools are set up
//! then. The measured window starts after it, and `sample` is called at both ends of the
//! window (the caller reads the proxies' CPU time there).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Serialize;
use tokio::net::TcpStream;

use crate::stats::{micros, percentile};

/// HTTP/1.1 with keep-alive, or HTTP/2 with prior knowledge (h2c).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Proto {
    #[serde(rename = "http/1.1")]
    Http1,
    #[serde(rename = "h2")]
    Http2,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Http1 => "HTTP/1.1",
            Proto::Http2 => "HTTP/2",
        }
    }
}

/// What to send and for how long.
#[derive(Clone, Debug)]
pub struct Load {
    pub proto: Proto,
    /// Requests in flight.
    pub concurrency: usize,
    /// Where to connect (a pod IP or a Service VIP).
    pub addr: SocketAddr,
    /// `Host` / `:authority`.
    pub authority: String,
    /// Size of each response body; the path is `/bytes/<size>`.
    pub body_size: usize,
    /// Unmeasured start of the run.
    pub warmup: Duration,
    /// Length of the measured window (unless `max_requests` ends the run first).
    pub window: Duration,
    /// Requests in the whole run, warm-up included.
    pub max_requests: usize,
}

/// One run's result.
#[derive(Clone, Debug, Serialize)]
pub struct LoadRun {
    /// Requests completed in the measured window.
    pub requests: usize,
    pub seconds: f64,
    pub requests_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

/// Runs `load`; `sample` is called at the start and at the end of the measured window, and
/// both results are handed back with the run.
pub fn run<S, T>(load: &Load, sample: S) -> anyhow::Result<(LoadRun, T, T)>
where
    S: Fn() -> anyhow::Result<T>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the load generator's runtime")?;
    rt.block_on(run_async(load, sample))
}

async fn run_async<S, T>(load: &Load, sample: S) -> anyhow::Result<(LoadRun, T, T)>
where
    S: Fn() -> anyhow::Result<T>,
{
    let start = Instant::now();
    let window_start = start + load.warmup;
    let deadline = window_start + load.window;
    let shared = Arc::new(Shared {
        load: load.clone(),
        window_start,
        deadline,
        issued: AtomicUsize::new(0),
    });
    let mut workers = Vec::with_capacity(load.concurrency);
    match load.proto {
        Proto::Http1 => {
            for _ in 0..load.concurrency {
                let send = connect_http1(load.addr).await?;
                workers.push(tokio::spawn(worker_http1(send, shared.clone())));
            }
        }
        Proto::Http2 => {
            let send = connect_http2(load.addr).await?;
            for _ in 0..load.concurrency {
                workers.push(tokio::spawn(worker_http2(send.clone(), shared.clone())));
            }
        }
    }
    tokio::time::sleep_until(window_start.into()).await;
    let first = sample()?;
    let measured_from = Instant::now();
    let mut samples = Vec::new();
    for w in workers {
        samples.extend(w.await.context("load worker panicked")??);
    }
    let last = sample()?;
    let seconds = measured_from.elapsed().as_secs_f64();
    let requests = samples.len();
    let run = LoadRun {
        requests,
        seconds,
        requests_per_s: requests as f64 / seconds.max(1e-9),
        p50_us: micros(percentile(&mut samples, 50.0)),
        p99_us: micros(percentile(&mut samples, 99.0)),
    };
    Ok((run, first, last))
}

struct Shared {
    load: Load,
    window_start: Instant,
    deadline: Instant,
    issued: AtomicUsize,
}

impl Shared {
    /// Whether another request may start.
    fn next(&self) -> bool {
        Instant::now() < self.deadline
            && self.issued.fetch_add(1, Ordering::Relaxed) < self.load.max_requests
    }

    fn request(&self) -> anyhow::Result<Request<Empty<Bytes>>> {
        let path = format!("/bytes/{}", self.load.body_size);
        let uri = match self.load.proto {
            Proto::Http1 => path,
            Proto::Http2 => format!("http://{}{path}", self.load.authority),
        };
        let mut b = Request::get(uri);
        if self.load.proto == Proto::Http1 {
            b = b.header(header::HOST, &self.load.authority);
        }
        Ok(b.body(Empty::new())?)
    }

    /// Checks a response and reads its body to the end.
    async fn finish(&self, resp: http::Response<hyper::body::Incoming>) -> anyhow::Result<()> {
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        if status != StatusCode::OK || body.len() != self.load.body_size {
            bail!(
                "answer {status} with {} bytes, expected 200 with {}: {}",
                body.len(),
                self.load.body_size,
                String::from_utf8_lossy(&body[..body.len().min(200)])
            );
        }
        Ok(())
    }
}

async fn tcp(addr: SocketAddr) -> anyhow::Result<TokioIo<TcpStream>> {
    let s = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
        .await
        .with_context(|| format!("connecting to {addr}: timed out"))?
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_nodelay(true)?;
    Ok(TokioIo::new(s))
}

async fn connect_http1(addr: SocketAddr) -> anyhow::Result<http1::SendRequest<Empty<Bytes>>> {
    let (send, conn) = http1::handshake(tcp(addr).await?).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(send)
}

async fn connect_http2(addr: SocketAddr) -> anyhow::Result<http2::SendRequest<Empty<Bytes>>> {
    let (send, conn) = http2::Builder::new(TokioExecutor::new())
        .handshake(tcp(addr).await?)
        .await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(send)
}

async fn worker_http1(
    mut send: http1::SendRequest<Empty<Bytes>>,
    s: Arc<Shared>,
) -> anyhow::Result<Vec<Duration>> {
    let mut samples = Vec::new();
    while s.next() {
        let t0 = Instant::now();
        send.ready().await.context("HTTP/1.1 connection closed")?;
        let resp = send.send_request(s.request()?).await?;
        s.finish(resp).await?;
        if t0 >= s.window_start {
            samples.push(t0.elapsed());
        }
    }
    Ok(samples)
}

async fn worker_http2(
    mut send: http2::SendRequest<Empty<Bytes>>,
    s: Arc<Shared>,
) -> anyhow::Result<Vec<Duration>> {
    let mut samples = Vec::new();
    while s.next() {
        let t0 = Instant::now();
        send.ready().await.context("HTTP/2 connection closed")?;
        let resp = send.send_request(s.request()?).await?;
        s.finish(resp).await?;
        if t0 >= s.window_start {
            samples.push(t0.elapsed());
        }
    }
    Ok(samples)
}
