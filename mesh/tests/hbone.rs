//! HBONE over real sockets on loopback: byte-exact bulk transfer, pooling, half-close, resets,
//! refusals, hostile peers and graceful drain.

mod hbone_support;

use std::io::ErrorKind;
use std::time::Duration;

use hbone_support::{early_outbound, echo_server, Mesh, Pattern};
use mesh::hbone::{H2Settings, HboneError};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(120);

/// An app that reads until EOF, then answers with the SHA-256 and length of what it read.
async fn digest_server() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut hasher = Sha256::new();
                let mut total = 0u64;
                let mut buf = vec![0u8; 256 << 10];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) => break,
                        Ok(n) => {
                            hasher.update(&buf[..n]);
                            total += n as u64;
                        }
                        Err(_) => return,
                    }
                }
                let mut answer = hasher.finalize().to_vec();
                answer.extend_from_slice(&total.to_be_bytes());
                let _ = s.write_all(&answer).await;
            });
        }
    });
    addr
}

/// Sends `len` pattern bytes on `s`, half-closes, and checks the digest answer.
async fn send_and_verify(mut s: TcpStream, len: u64) {
    let (mut r, mut w) = s.split();
    let send = async {
        let mut pattern = Pattern::new(len);
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 << 10];
        let mut left = len;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            pattern.fill(&mut buf[..n]);
            hasher.update(&buf[..n]);
            w.write_all(&buf[..n]).await.unwrap();
            left -= n as u64;
        }
        w.shutdown().await.unwrap();
        hasher.finalize().to_vec()
    };
    let receive = async {
        let mut answer = Vec::new();
        r.read_to_end(&mut answer).await.unwrap();
        answer
    };
    let (sent_digest, answer) = tokio::join!(send, receive);
    assert_eq!(answer.len(), 40, "digest server answered {answer:?}");
    assert_eq!(&answer[32..], &len.to_be_bytes(), "byte count differs");
    assert_eq!(&answer[..32], &sent_digest[..], "checksum differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_through_one_tunnel_is_byte_exact() {
    let mesh = Mesh::start(H2Settings::default(), vec![]).await;
    let outbound = mesh.outbound(digest_server().await).await;
    let s = TcpStream::connect(outbound).await.unwrap();
    timeout(LIMIT, send_and_verify(s, 1 << 30))
        .await
        .expect("1 GiB transfer took over 120 s");
    assert_eq!(mesh.pool.stats().connections_opened, 1);
}

/// Opens tunnel `i` through `mesh` to the echo server at `echo` and checks one echo on it.
fn echoed_tunnel(
    mesh: &Mesh,
    echo: std::net::SocketAddr,
    i: usize,
) -> impl std::future::Future<Output = mesh::hbone::H2Stream> {
    let pool = mesh.pool.clone();
    let req = mesh.request(echo);
    async move {
        let mut t = pool.connect(req).await.expect("tunnel");
        let msg = format!("tunnel {i}");
        t.write_all(msg.as_bytes()).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        t.read_exact(&mut back).await.unwrap();
        assert_eq!(back, msg.as_bytes());
        t
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_tunnels_share_pooled_connections() {
    let settings = H2Settings {
        idle_timeout: Duration::from_millis(400),
        ..H2Settings::default()
    };
    let mesh = Mesh::start(settings, vec![]).await;
    let echo = echo_server().await;
    let opens = (0..200).map(|i| echoed_tunnel(&mesh, echo, i));
    let tunnels = timeout(LIMIT, futures::future::join_all(opens))
        .await
        .expect("opening 200 tunnels");
    let stats = mesh.pool.stats();
    assert_eq!(stats.active_streams, 200);
    assert_eq!(
        stats.connections, 2,
        "100 streams per connection: {stats:?}"
    );
    assert_eq!(stats.connections_opened, 2);
    assert_eq!(
        mesh.server_stats
            .connections
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    drop(tunnels);

    // With no tunnels left, idle connections are closed after the idle timeout.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let stats = mesh.pool.stats();
        if stats.connections == 0 {
            assert_eq!(stats.active_streams, 0);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "idle connections not evicted: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// TCP connections of this machine's loopback in state ESTABLISHED whose remote end is `to`
/// (the client ends of HBONE connections to that server), from `/proc/net/tcp`.
fn established_to(to: std::net::SocketAddr) -> usize {
    let std::net::SocketAddr::V4(to) = to else {
        panic!("the test server listens on IPv4")
    };
    // /proc/net/tcp writes an address as the hex of its 32-bit value in host (little-endian)
    // order, and the port in hex; state 01 is ESTABLISHED.
    let want = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(to.ip().octets()),
        to.port()
    );
    std::fs::read_to_string("/proc/net/tcp")
        .expect("reading /proc/net/tcp")
        .lines()
        .skip(1)
        .filter(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            f.len() > 3 && f[2] == want && f[3] == "01"
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_s_extra_connection_closes_early_and_one_stays_warm() {
    let settings = H2Settings {
        idle_timeout: Duration::from_secs(4),
        surplus_idle_timeout: Duration::from_millis(300),
        ..H2Settings::default()
    };
    let mesh = Mesh::start(settings, vec![]).await;
    let echo = echo_server().await;
    let open = |i: usize| echoed_tunnel(&mesh, echo, i);
    // A burst of 150 tunnels needs two connections (100 streams each).
    let burst = timeout(LIMIT, futures::future::join_all((0..150).map(open)))
        .await
        .expect("opening 150 tunnels");
    assert_eq!(mesh.pool.stats().connections, 2);
    assert_eq!(established_to(mesh.hbone_addr), 2);
    let idle_at = tokio::time::Instant::now();
    drop(burst);

    // The surplus connection goes after ~0.3 s (closed on the wire, not only forgotten); the
    // warm one stays.
    let deadline = idle_at + Duration::from_secs(3);
    while mesh.pool.stats().connections > 1 || established_to(mesh.hbone_addr) > 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the burst's extra connection is still open: {:?}, {} on the wire",
            mesh.pool.stats(),
            established_to(mesh.hbone_addr)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        idle_at.elapsed() < Duration::from_secs(4),
        "closed only at the idle timeout"
    );
    assert_eq!(mesh.pool.stats().connections, 1);
    assert_eq!(established_to(mesh.hbone_addr), 1);

    // The next tunnel rides the warm connection: nothing is dialled.
    let again = open(150).await;
    assert_eq!(mesh.pool.stats().connections_opened, 2);
    drop(again);

    // And once idle for the whole idle timeout, it goes too.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while mesh.pool.stats().connections > 0 || established_to(mesh.hbone_addr) > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the warm connection outlived its idle timeout: {:?}",
            mesh.pool.stats()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_half_close_keeps_the_other_direction() {
    let mesh = Mesh::start(H2Settings::default(), vec![]).await;
    // The app reads to EOF and only then answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        s.write_all(format!("got {} bytes", got.len()).as_bytes())
            .await
            .unwrap();
    });
    let mut s = TcpStream::connect(mesh.outbound(app).await).await.unwrap();
    s.write_all(b"abc").await.unwrap();
    s.shutdown().await.unwrap();
    let mut answer = String::new();
    timeout(LIMIT, s.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer, "got 3 bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_half_close_keeps_the_other_direction() {
    let mesh = Mesh::start(H2Settings::default(), vec![]).await;
    // The app sends a banner, closes its sending side, and still reads what comes after.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        s.write_all(b"banner").await.unwrap();
        s.shutdown().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        tx.send(got).unwrap();
    });
    let mut s = TcpStream::connect(mesh.outbound(app).await).await.unwrap();
    let mut banner = Vec::new();
    timeout(LIMIT, s.read_to_end(&mut banner))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(banner, b"banner", "client saw EOF after the banner");
    s.write_all(b"late data").await.unwrap();
    s.shutdown().await.unwrap();
    let got = timeout(LIMIT, rx).await.unwrap().unwrap();
    assert_eq!(got, b"late data");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_by_the_app_resets_the_client() {
    let mesh = Mesh::start(H2Settings::default(), vec![]).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.unwrap();
        // Abort: SO_LINGER 0 makes close() send RST instead of FIN.
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(s);
    });
    let mut s = TcpStream::connect(mesh.outbound(app).await).await.unwrap();
    s.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 16];
    let result = timeout(LIMIT, s.read(&mut buf)).await.unwrap();
    match result {
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
        Ok(n) => panic!("expected a reset, read {n} bytes (0 = clean EOF)"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_reach_the_client_with_status_and_reason() {
    let mesh = Mesh::start(H2Settings::default(), vec![hbone_support::client_id()]).await;
    let err = mesh
        .pool
        .connect(mesh.request(echo_server().await))
        .await
        .err()
        .expect("denied client must not get a tunnel");
    assert_eq!(err.status(), Some(http::StatusCode::UNAUTHORIZED), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("401") && text.contains("denied by policy"),
        "{text}"
    );

    let open = Mesh::start(H2Settings::default(), vec![]).await;
    // A port nobody listens on: bind, note the port, close.
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let err = open
        .pool
        .connect(open.request(closed))
        .await
        .err()
        .expect("unreachable target must not get a tunnel");
    assert_eq!(
        err.status(),
        Some(http::StatusCode::SERVICE_UNAVAILABLE),
        "{err}"
    );
    assert!(matches!(err, HboneError::Refused { .. }));
}

/// Reads until the peer closes; true if it did within the limit.
async fn closed_by_peer(s: &mut (impl AsyncReadExt + Unpin)) -> bool {
    let mut buf = [0u8; 1024];
    let wait = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    timeout(Duration::from_secs(20), wait).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_peers_lose_only_their_own_connection() {
    let mesh = Mesh::start(H2Settings::default(), vec![]).await;
    let echo = echo_server().await;
    let mut live = mesh.pool.connect(mesh.request(echo)).await.unwrap();

    // 1. Plain text instead of TLS.
    let mut raw = TcpStream::connect(mesh.hbone_addr).await.unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(closed_by_peer(&mut raw).await, "garbage peer not closed");

    // 2. A valid mTLS client that does not offer h2.
    let mut config = (*mesh
        .tls
        .client_config(&hbone_support::client_id(), &[hbone_support::server_id()])
        .unwrap())
    .clone();
    config.alpn_protocols.clear();
    let tcp = TcpStream::connect(mesh.hbone_addr).await.unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(mesh.hbone_addr.ip().into());
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    assert!(
        closed_by_peer(&mut tls).await,
        "TLS peer without h2 not closed"
    );

    // 3. A valid mTLS + h2 client that sends GET instead of CONNECT.
    let config = mesh
        .tls
        .client_config(&hbone_support::client_id(), &[hbone_support::server_id()])
        .unwrap();
    let tcp = TcpStream::connect(mesh.hbone_addr).await.unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(mesh.hbone_addr.ip().into());
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    let (mut sender, conn) = h2::client::handshake(tls).await.unwrap();
    let conn_task = tokio::spawn(conn);
    let req = http::Request::get("http://example/").body(()).unwrap();
    let (response, _) = sender.send_request(req, true).unwrap();
    let response = timeout(LIMIT, response).await.unwrap().unwrap();
    assert_eq!(response.status(), http::StatusCode::BAD_REQUEST);
    drop(sender);
    timeout(LIMIT, conn_task)
        .await
        .expect("server did not close the non-HBONE HTTP/2 connection")
        .unwrap()
        .ok();

    assert_eq!(
        mesh.server_stats
            .rejected_connections
            .load(std::sync::atomic::Ordering::Relaxed),
        3
    );
    // The tunnel that was open all along still works.
    live.write_all(b"still here").await.unwrap();
    let mut back = [0u8; 10];
    timeout(LIMIT, live.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&back, b"still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_lets_an_inflight_transfer_finish() {
    let mesh = Mesh::start(H2Settings::default(), vec![]).await;
    let digest = digest_server().await;
    let mut tunnel = mesh.pool.connect(mesh.request(digest)).await.unwrap();

    let total: u64 = 64 << 20;
    let mut pattern = Pattern::new(7);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut sent = 0u64;
    let mut drained = false;
    while sent < total {
        pattern.fill(&mut buf);
        hasher.update(&buf);
        tunnel.write_all(&buf).await.unwrap();
        sent += buf.len() as u64;
        if !drained && sent >= 8 << 20 {
            // Mid-transfer: the server stops accepting and sends GOAWAY.
            mesh.drain.start();
            drained = true;
            // The listener closes: new connections are refused while this transfer goes on.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while TcpStream::connect(mesh.hbone_addr).await.is_ok() {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "listener still open"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    tunnel.shutdown().await.unwrap();
    let mut answer = Vec::new();
    timeout(LIMIT, tunnel.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&answer[32..], &total.to_be_bytes());
    assert_eq!(&answer[..32], &hasher.finalize()[..]);
    drop(tunnel);
    timeout(LIMIT, mesh.server_task)
        .await
        .expect("server did not finish draining")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_deadline_closes_lingering_tunnels() {
    let mesh = Mesh::start(H2Settings::default(), vec![]).await;
    let (drain, watch) = mesh::hbone::Drain::new();
    // A second server sharing the mesh's identities, with a short drain deadline.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = mesh::hbone::Server::new(
        std::sync::Arc::new(mesh.tls.server_config(&hbone_support::server_id()).unwrap()),
        hbone_support::Forward {
            deny: vec![],
            delay: Duration::ZERO,
        },
        H2Settings::default(),
    );
    let task = tokio::spawn(server.serve(listener, watch, Duration::from_millis(300)));
    let mut req = mesh.request(echo_server().await);
    req.address = addr;
    let mut tunnel = mesh.pool.connect(req).await.unwrap();
    drain.start();
    timeout(LIMIT, task)
        .await
        .expect("server ignored its drain deadline")
        .unwrap();
    // The idle tunnel was cut at the deadline: reading ends (EOF or reset) instead of hanging.
    assert!(closed_by_peer(&mut tunnel).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_data_tunnels_are_byte_exact_both_ways() {
    let mesh = Mesh::start(H2Settings::default(), vec![]).await;
    let outbound = early_outbound(&mesh, digest_server().await).await;
    // Bulk and a transfer of a single byte: the first chunk takes the early path either way.
    for len in [64 << 20, 1] {
        let s = TcpStream::connect(outbound).await.unwrap();
        timeout(LIMIT, send_and_verify(s, len))
            .await
            .expect("early-data transfer stalled");
    }
    let mut s = TcpStream::connect(early_outbound(&mesh, echo_server().await).await)
        .await
        .unwrap();
    s.write_all(b"first words").await.unwrap();
    let mut back = [0u8; 11];
    timeout(LIMIT, s.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&back, b"first words");
}

/// The app wrote before the tunnel was answered; a refusal must not look like a clean close.
async fn reset_after_early_bytes(outbound: std::net::SocketAddr) {
    let mut s = TcpStream::connect(outbound).await.unwrap();
    s.write_all(b"sent before the answer").await.unwrap();
    let mut buf = [0u8; 64];
    let got = timeout(LIMIT, s.read(&mut buf)).await.expect("no answer");
    match got {
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
        Ok(n) => panic!("refused tunnel ended with a clean read of {n} bytes, not a reset"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_early_data_tunnel_resets_the_app() {
    // Denied by policy (401) and an unreachable target (503), answered late enough that the
    // app's bytes are surely in the tunnel first.
    let late = Duration::from_millis(300);
    let denied = Mesh::start_answering_after(
        H2Settings::default(),
        vec![hbone_support::client_id()],
        late,
    )
    .await;
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let app = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_addr = app.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = app.accept().await {
            let _ = seen_tx.send(s);
        }
    });
    reset_after_early_bytes(early_outbound(&denied, app_addr).await).await;
    assert!(
        seen.try_recv().is_err(),
        "the app behind a refused tunnel was connected to"
    );

    let open = Mesh::start_answering_after(H2Settings::default(), vec![], late).await;
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    reset_after_early_bytes(early_outbound(&open, closed).await).await;
}
