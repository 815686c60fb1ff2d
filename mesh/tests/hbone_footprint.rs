//! What an open, idle HBONE tunnel costs in heap, both ends together, and the size of the
//! futures a tunnel's task keeps for its whole life.
//!
//! A node holds thousands of mostly idle tunnels, so the bytes each keeps are the proxy's
//! memory. This binary counts every allocation (its own global allocator) and opens real
//! tunnels through a loopback mesh: the client's pool and `relay_connecting`, the server's
//! `relay`, an echo app behind it.

mod hbone_support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use hbone_support::{early_outbound, Mesh};
use mesh::hbone::{relay_connecting, H2Settings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bytes allocated and not yet freed, over the whole process.
static LIVE: AtomicIsize = AtomicIsize::new(0);

struct Counting;

// SAFETY: every call is passed on to the system allocator unchanged; only sizes are counted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract is System's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract is System's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: the caller's contract is System's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// An echo app whose idle connections hold no heap (`tokio::io::copy` keeps an 8 KiB buffer
/// per connection, which would drown what is measured here).
async fn small_echo() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 16];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// Opens `n` tunnels through `outbound`, each proven open by a one-byte echo, and keeps them.
async fn open_idle(outbound: std::net::SocketAddr, n: usize, held: &mut Vec<TcpStream>) {
    for _ in 0..n {
        let mut s = TcpStream::connect(outbound).await.unwrap();
        s.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        held.push(s);
    }
    // Let every relay task reach its idle wait (the one-thread runtime runs them now).
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

/// Heap per idle tunnel, client and server ends together with the echo app's task and the
/// test's own socket: 5,994 bytes before the tunnel futures were slimmed (the pool's
/// stream-opening state kept for the tunnel's life, arguments held beside the halves made
/// from them, the answer's state, an idle chunk list), 5,098 after.
#[tokio::test]
async fn an_idle_tunnel_keeps_little_heap() {
    // One HBONE connection for every tunnel, so no connection setup lands in the measurement.
    let settings = H2Settings {
        max_streams_per_connection: 10_000,
        ..H2Settings::default()
    };
    let mesh = Mesh::start(settings, vec![]).await;
    let echo = small_echo().await;
    let outbound = early_outbound(&mesh, echo).await;
    let mut held = Vec::with_capacity(1_000);
    // Warm up past the growth steps of h2's stream tables (they double: 300 → capacity 512).
    open_idle(outbound, 300, &mut held).await;
    let before = LIVE.load(Ordering::Relaxed);
    open_idle(outbound, 100, &mut held).await;
    let per_tunnel = (LIVE.load(Ordering::Relaxed) - before) / 100;
    eprintln!("heap per idle tunnel: {per_tunnel} bytes");
    assert!(
        per_tunnel <= 5_500,
        "an idle tunnel keeps {per_tunnel} bytes of heap (client, server, echo app together)"
    );
    // Every tunnel still works.
    for s in &mut held {
        s.write_all(b"y").await.unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"y");
    }
}

/// The futures a client tunnel's task is made of: opening its stream (state freed once open)
/// and the relay that lives as long as the tunnel.
#[tokio::test]
async fn tunnel_futures_stay_small() {
    let mesh = Mesh::start(H2Settings::default(), vec![]).await;
    let echo = small_echo().await;
    let open = mesh.pool.open(mesh.request(echo));
    // A box: the request and the state of opening the stream go into it, and out of the
    // caller's task once the stream is open.
    assert!(
        std::mem::size_of_val(&open) <= 64,
        "Pool::open's future is {} bytes (it was 1,568 with its state inline)",
        std::mem::size_of_val(&open)
    );
    eprintln!("Pool::open future: {} bytes", std::mem::size_of_val(&open));
    let connecting = open.await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (tcp, _) = listener.accept().await.unwrap();
    let relay = relay_connecting(tcp, connecting);
    eprintln!(
        "relay_connecting future: {} bytes",
        std::mem::size_of_val(&relay)
    );
    assert!(
        std::mem::size_of_val(&relay) <= 1_100,
        "relay_connecting's future is {} bytes (it was 1,232 as an async fn)",
        std::mem::size_of_val(&relay)
    );
    drop(relay);
    drop(app);
}
