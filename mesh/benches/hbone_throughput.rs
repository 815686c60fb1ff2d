//! HBONE throughput through one tunnel on loopback, next to plain TCP on loopback in the same
//! run. The tunnelled path has ztunnel's shape: app → outbound relay → mTLS/HTTP/2 → server
//! relay → app. At the end the ratio of the two mean throughputs is printed.

#[path = "../tests/hbone_support/mod.rs"]
mod hbone_support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hbone_support::Mesh;
use mesh::hbone::H2Settings;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

const TRANSFER: u64 = 64 << 20;

/// Per path: total measured time and iterations, to print the ratio after criterion's report.
static TOTALS: Mutex<Option<HashMap<&'static str, (Duration, u64)>>> = Mutex::new(None);

/// Reads until EOF, then answers one byte so the sender knows everything arrived.
async fn sink() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 << 10];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        let _ = s.write_all(b"k").await;
                        return;
                    }
                }
            });
        }
    });
    addr
}

async fn transfer(to: SocketAddr) {
    let mut s = TcpStream::connect(to).await.unwrap();
    let buf = vec![0x5au8; 256 << 10];
    let mut left = TRANSFER;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        s.write_all(&buf[..n]).await.unwrap();
        left -= n as u64;
    }
    s.shutdown().await.unwrap();
    let mut ack = [0u8; 1];
    s.read_exact(&mut ack).await.unwrap();
}

fn record(path: &'static str, took: Duration, iters: u64) {
    let mut totals = TOTALS.lock();
    let entry = totals
        .get_or_insert_with(HashMap::new)
        .entry(path)
        .or_default();
    entry.0 += took;
    entry.1 += iters;
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (direct, tunnelled, _mesh) = rt.block_on(async {
        let mesh = Mesh::start(H2Settings::default(), vec![]).await;
        let target = sink().await;
        let outbound = mesh.outbound(target).await;
        (target, outbound, mesh)
    });

    let mut group = c.benchmark_group("loopback_64MiB");
    group.throughput(Throughput::Bytes(TRANSFER));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(8));
    for (name, addr) in [("plain_tcp", direct), ("hbone", tunnelled)] {
        group.bench_function(name, |b| {
            b.to_async(&rt).iter_custom(|iters| async move {
                let start = Instant::now();
                for _ in 0..iters {
                    transfer(addr).await;
                }
                let took = start.elapsed();
                record(name, took, iters);
                took
            })
        });
    }
    group.finish();

    let totals = TOTALS.lock();
    let totals = totals.as_ref().expect("both paths ran");
    let gbps = |path: &str| {
        let (took, iters) = totals[path];
        (TRANSFER * iters) as f64 * 8.0 / took.as_secs_f64() / 1e9
    };
    let (plain, hbone) = (gbps("plain_tcp"), gbps("hbone"));
    println!(
        "\nHBONE throughput: {hbone:.2} Gbit/s; plain TCP: {plain:.2} Gbit/s; ratio hbone/plain = {:.3}",
        hbone / plain
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
