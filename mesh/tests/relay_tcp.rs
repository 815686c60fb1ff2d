//! `relay_tcp`, the TCP ⇄ TCP relay of passthrough traffic (`splice(2)` through a pipe per
//! direction): every byte in order both ways, a FIN passed on one direction at a time, a reset
//! passed on as a reset, a reader that stops slows the writer instead of filling memory, small
//! messages go on at once, and bytes `splice` cannot reach (urgent data) do not stall it.
//!
//! The tests take one lock: the pipe count is read from this process's descriptor table.

use std::io::ErrorKind;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mesh::hbone::{relay_tcp, RelayError, RelayStats};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(30);
static SERIAL: Mutex<()> = Mutex::const_new(());

/// A connected pair on loopback: (the end the test holds, the end the relay gets).
async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (held, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (held.unwrap(), accepted.unwrap().0)
}

/// An app and a server with a relay between them (app = downstream, server = upstream).
async fn relayed() -> (TcpStream, TcpStream, JoinHandle<RelayStats>) {
    let (app, app_side) = pair().await;
    let (server, server_side) = pair().await;
    (app, server, tokio::spawn(relay_tcp(app_side, server_side)))
}

/// Deterministic bytes that differ along the stream (a shift or a lost chunk shows).
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Writes `data` in uneven chunks, then FIN.
async fn send_all(mut w: impl AsyncWriteExt + Unpin, data: Vec<u8>) {
    let mut at = 0;
    let mut step = 1;
    while at < data.len() {
        let end = (at + step).min(data.len());
        w.write_all(&data[at..end]).await.unwrap();
        at = end;
        step = step * 7 % 300_007 + 1;
    }
    w.shutdown().await.unwrap();
}

/// Reads to a clean EOF: length and SHA-256 of what came.
async fn receive_all(mut r: impl AsyncReadExt + Unpin) -> (u64, Vec<u8>) {
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 100_000];
    let mut total = 0;
    loop {
        let n = r.read(&mut buf).await.unwrap();
        if n == 0 {
            return (total, hash.finalize().to_vec());
        }
        hash.update(&buf[..n]);
        total += n as u64;
    }
}

/// Reads until the stream ends: the error if the end was one.
async fn end_of(s: &mut TcpStream) -> Option<std::io::Error> {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match s.read(&mut buf).await {
            Ok(0) => return None,
            Ok(_) => {}
            Err(e) => return Some(e),
        }
    }
}

/// Pipes open in this process.
fn pipes() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|l| l.to_string_lossy().starts_with("pipe:"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_both_ways_at_once_arrives_whole_and_counted_through_pipes() {
    let _serial = SERIAL.lock().await;
    const UP: usize = 24 << 20;
    const DOWN: usize = 40 << 20;
    let before = pipes();
    let (app, server, relay) = relayed().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(pipes(), before, "an idle connection holds no pipe");
    let (up, down) = (pattern(1, UP), pattern(2, DOWN));
    let (up_sum, down_sum) = (Sha256::digest(&up).to_vec(), Sha256::digest(&down).to_vec());
    let (app_r, app_w) = app.into_split();
    let (server_r, server_w) = server.into_split();
    // The most pipes seen while the transfer runs (sampled until both directions have one,
    // or the transfer is over).
    let done = Arc::new(AtomicBool::new(false));
    let during = tokio::spawn({
        let done = done.clone();
        async move {
            let mut most = 0;
            while most < before + 4 && !done.load(Ordering::Relaxed) {
                most = most.max(pipes());
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            most
        }
    });
    let ((up_len, up_got), (down_len, down_got), ..) = timeout(LIMIT, async {
        tokio::join!(
            receive_all(server_r),
            receive_all(app_r),
            send_all(app_w, up),
            send_all(server_w, down)
        )
    })
    .await
    .unwrap();
    done.store(true, Ordering::Relaxed);
    assert_eq!((up_len, down_len), (UP as u64, DOWN as u64));
    assert!(up_got == up_sum, "upload corrupted");
    assert!(down_got == down_sum, "download corrupted");
    let stats = timeout(LIMIT, relay).await.unwrap().unwrap();
    assert!(stats.error.is_none(), "{:?}", stats.error);
    assert_eq!((stats.sent, stats.received), (UP as u64, DOWN as u64));
    // One pipe (two descriptors) per direction while bytes flow, none once the relay ends.
    assert_eq!(during.await.unwrap(), before + 4, "bytes were not spliced");
    assert_eq!(pipes(), before);
}

/// Each end closes its sending side in turn; the other direction keeps working until then.
async fn half_close(app_first: bool) {
    let _serial = SERIAL.lock().await;
    let (mut app, mut server, relay) = relayed().await;
    let (first, second) = if app_first {
        (&mut app, &mut server)
    } else {
        (&mut server, &mut app)
    };
    first.write_all(b"request").await.unwrap();
    first.shutdown().await.unwrap();
    let mut got = Vec::new();
    timeout(LIMIT, second.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"request", "the FIN came with or after every byte");
    // The closed direction stays closed; the open one still carries bytes, several times.
    for i in 0..3u8 {
        second.write_all(&[b'a' + i; 1000]).await.unwrap();
        let mut answer = [0u8; 1000];
        timeout(LIMIT, first.read_exact(&mut answer))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(answer, [b'a' + i; 1000]);
    }
    second.shutdown().await.unwrap();
    assert!(timeout(LIMIT, end_of(first)).await.unwrap().is_none());
    let stats = timeout(LIMIT, relay).await.unwrap().unwrap();
    assert!(stats.error.is_none(), "{:?}", stats.error);
    let (upstream_bytes, downstream_bytes) = if app_first { (7, 3000) } else { (3000, 7) };
    assert_eq!(
        (stats.sent, stats.received),
        (upstream_bytes, downstream_bytes)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apps_fin_closes_only_the_upstream_direction() {
    half_close(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_fin_closes_only_the_downstream_direction() {
    half_close(false).await;
}

/// One end resets mid-transfer (SO_LINGER 0 close); the other sees a reset, not an end.
async fn reset(app_resets: bool) {
    let _serial = SERIAL.lock().await;
    let (app, server, relay) = relayed().await;
    let (resetting, mut other) = if app_resets {
        (app, server)
    } else {
        (server, app)
    };
    // Bytes flow both ways first, so both pipes exist and hold nothing stale.
    let (mut rr, mut rw) = resetting.into_split();
    rw.write_all(&[1u8; 100_000]).await.unwrap();
    let mut seen = vec![0u8; 100_000];
    timeout(LIMIT, other.read_exact(&mut seen))
        .await
        .unwrap()
        .unwrap();
    other.write_all(&[2u8; 100_000]).await.unwrap();
    timeout(LIMIT, rr.read_exact(&mut seen))
        .await
        .unwrap()
        .unwrap();
    let resetting = rr.reunite(rw).unwrap();
    socket2::SockRef::from(&resetting)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(resetting);
    let end = timeout(LIMIT, end_of(&mut other)).await.unwrap();
    let end = end.expect("a reset arrived as a clean end");
    assert_eq!(end.kind(), ErrorKind::ConnectionReset, "{end}");
    let stats = timeout(LIMIT, relay).await.unwrap().unwrap();
    match (app_resets, &stats.error) {
        (true, Some(RelayError::Downstream(_))) | (false, Some(RelayError::Upstream(_))) => {}
        (_, other) => panic!("wrong side blamed: {other:?}"),
    }
    assert_eq!((stats.sent, stats.received), (100_000, 100_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_reset_resets_the_server() {
    reset(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_reset_resets_the_app() {
    reset(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_stops_reading_stops_the_app_without_loss() {
    let _serial = SERIAL.lock().await;
    // What the path may hold with nobody reading: the app's send buffer, the relay's receive
    // buffer, the relay's pipe (512 KiB at most), the relay's send buffer and the server's
    // receive buffer, each at the largest size the kernel lets autotuning reach on this
    // machine. The transfer is longer than that, so the app must be stopped.
    let ceiling = 2 * (tcp_buffer_max("tcp_rmem") + tcp_buffer_max("tcp_wmem")) + (1 << 20);
    let len = ceiling + (16 << 20);
    let (app, server, relay) = relayed().await;
    let (mut server_r, server_w) = server.into_split();
    let (_app_r, mut app_w) = app.into_split();
    let data = pattern(3, len);
    let sum = Sha256::digest(&data).to_vec();
    let written = Arc::new(AtomicUsize::new(0));
    let progress = written.clone();
    let writer = tokio::spawn(async move {
        let mut at = 0;
        while at < len {
            at += app_w
                .write(&data[at..(at + (64 << 10)).min(len)])
                .await
                .unwrap();
            progress.store(at, Ordering::Relaxed);
        }
        app_w.shutdown().await.unwrap();
    });
    // The server reads nothing: the app writes what the sockets and one pipe hold, then its
    // writes wait. Bounded: wait until a quarter second passes without progress.
    let mut last = usize::MAX;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = written.load(Ordering::Relaxed);
        if now == last {
            break;
        }
        last = now;
    }
    assert_eq!(
        written.load(Ordering::Relaxed),
        last,
        "the app never stopped"
    );
    assert!(
        last < ceiling,
        "{last} bytes taken with nobody reading (the buffers allow {ceiling})"
    );
    // The server reads again: everything arrives, in order.
    let (received, got) = timeout(LIMIT, receive_all(&mut server_r)).await.unwrap();
    assert_eq!(received, len as u64);
    assert!(got == sum, "bytes lost or reordered");
    writer.await.unwrap();
    // The server's FIN ends the other direction, and with it the relay.
    drop(server_w);
    let stats = timeout(LIMIT, relay).await.unwrap().unwrap();
    assert!(stats.error.is_none(), "{:?}", stats.error);
    assert_eq!(stats.sent, len as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_small_message_goes_on_alone() {
    let _serial = SERIAL.lock().await;
    let (mut app, mut server, relay) = relayed().await;
    // Ping-pong: no second message is sent before the first is answered, so a relay that
    // waited for more bytes (or for a full pipe) would stall here.
    for i in 0..2000u32 {
        let msg = i.to_be_bytes();
        app.write_all(&msg).await.unwrap();
        let mut got = [0u8; 4];
        timeout(LIMIT, server.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, msg);
        server.write_all(&got[..1]).await.unwrap();
        timeout(LIMIT, app.read_exact(&mut got[..1]))
            .await
            .unwrap()
            .unwrap();
    }
    drop((app, server));
    let stats = timeout(LIMIT, relay).await.unwrap().unwrap();
    assert_eq!((stats.sent, stats.received), (8000, 2000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urgent_data_does_not_stall_the_bytes_behind_it() {
    let _serial = SERIAL.lock().await;
    let (app, mut server, relay) = relayed().await;
    // `splice` stops at the urgent mark for good; the relay must notice the bytes behind it
    // and copy them (the urgent byte itself is dropped, as by any proxy that reads with recv).
    let sock = socket2::SockRef::from(&app);
    app.writable().await.unwrap();
    assert_eq!(sock.send(b"abc").unwrap(), 3);
    assert_eq!(sock.send_out_of_band(b"!").unwrap(), 1);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(sock.send(b"def").unwrap(), 3);
    let mut got = [0u8; 6];
    timeout(LIMIT, server.read_exact(&mut got))
        .await
        .expect("bytes after urgent data stalled in the relay")
        .unwrap();
    assert_eq!(&got, b"abcdef");
    let mut app = app;
    app.shutdown().await.unwrap();
    assert!(timeout(LIMIT, end_of(&mut server)).await.unwrap().is_none());
    drop((app, server));
    let stats = timeout(LIMIT, relay).await.unwrap().unwrap();
    assert_eq!(stats.sent, 6);
}

/// The largest buffer autotuning may give a TCP socket here (`/proc/sys/net/ipv4/<name>`'s
/// third field).
fn tcp_buffer_max(name: &str) -> usize {
    let path = format!("/proc/sys/net/ipv4/{name}");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.split_whitespace()
        .nth(2)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{path}: no third field in {text:?}"))
}
