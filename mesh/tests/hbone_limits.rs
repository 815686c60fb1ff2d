//! The HBONE server's bounds against a hostile but authenticated peer (a valid mTLS client
//! speaking HTTP/2 badly on purpose): rapid reset, oversized header blocks, CONTINUATION
//! floods. Each costs the peer its stream or its connection; the server keeps serving others.

mod hbone_support;

use std::net::SocketAddr;
use std::time::Duration;

use h2::Reason;
use hbone_support::{echo_server, Mesh};
use mesh::hbone::H2Settings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::client::TlsStream;

const LIMIT: Duration = Duration::from_secs(20);

/// A TLS connection to the mesh's HBONE server as its client identity (ALPN h2), on which the
/// test speaks HTTP/2 itself.
async fn tls_to(mesh: &Mesh) -> TlsStream<TcpStream> {
    let config = mesh
        .tls
        .client_config(&hbone_support::client_id(), &[hbone_support::server_id()])
        .unwrap();
    let tcp = TcpStream::connect(mesh.hbone_addr).await.unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(mesh.hbone_addr.ip().into());
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap()
}

fn connect_request(target: SocketAddr) -> http::Request<()> {
    http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(target.to_string())
        .body(())
        .unwrap()
}

/// A tunnel through the pool (a well-behaved client on its own connection) echoes.
async fn tunnel_works(mesh: &Mesh, echo: SocketAddr) {
    let mut t = timeout(LIMIT, mesh.pool.connect(mesh.request(echo)))
        .await
        .expect("a new tunnel in time")
        .expect("a new tunnel");
    t.write_all(b"still serving").await.unwrap();
    let mut back = [0u8; 13];
    timeout(LIMIT, t.read_exact(&mut back))
        .await
        .expect("echo in time")
        .unwrap();
    assert_eq!(&back, b"still serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_costs_the_peer_its_connection() {
    let mesh = Mesh::start(H2Settings::default(), vec![]).await;
    let echo = echo_server().await;
    // A tunnel of another client, open across the attack.
    let mut live = mesh.pool.connect(mesh.request(echo)).await.unwrap();

    let (mut sender, conn) = h2::client::handshake(tls_to(&mesh).await).await.unwrap();
    let conn_task = tokio::spawn(conn);
    // Open a stream and reset it at once, in a tight loop (bounded).
    const MAX: usize = 20_000;
    let mut sent = 0;
    let attack = async {
        while sent < MAX {
            let Ok(ready) = sender.clone().ready().await else {
                break;
            };
            sender = ready;
            let Ok((_response, mut stream)) = sender.send_request(connect_request(echo), false)
            else {
                break;
            };
            stream.send_reset(Reason::CANCEL);
            sent += 1;
        }
    };
    timeout(Duration::from_secs(60), attack)
        .await
        .expect("the attack loop ends (GOAWAY or its bound)");
    let ended = timeout(LIMIT, conn_task)
        .await
        .expect("the server ended the attacker's connection")
        .unwrap();
    let err = ended.expect_err("ended by an error, not cleanly");
    // The server sends GOAWAY(ENHANCE_YOUR_CALM) and closes; a client still writing may see
    // the closed socket before it reads the GOAWAY.
    let calm = err.is_go_away() && err.reason() == Some(Reason::ENHANCE_YOUR_CALM);
    assert!(
        calm || err.is_io(),
        "expected GOAWAY(ENHANCE_YOUR_CALM) after {sent} resets, got {err:?}"
    );
    assert!(sent < MAX, "all {MAX} streams were opened and reset");
    eprintln!("GOAWAY after {sent} streams opened and reset");

    // The server still serves: the tunnel that was open, and a new one.
    live.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    timeout(LIMIT, live.read_exact(&mut b))
        .await
        .expect("open tunnel still echoes")
        .unwrap();
    tunnel_works(&mesh, echo).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_header_block_is_refused_and_the_connection_kept() {
    let mesh = Mesh::start(H2Settings::default(), vec![]).await;
    let echo = echo_server().await;
    let (mut sender, conn) = h2::client::handshake(tls_to(&mesh).await).await.unwrap();
    let conn_task = tokio::spawn(conn);

    // 20 KiB of header: over the 16 KiB a CONNECT may carry.
    let mut big = connect_request(echo);
    big.headers_mut().insert(
        "x-padding",
        http::HeaderValue::from_str(&"p".repeat(20 << 10)).unwrap(),
    );
    let (response, _stream) = sender.send_request(big, false).unwrap();
    match timeout(LIMIT, response).await.expect("an answer in time") {
        Ok(response) => assert_eq!(
            response.status(),
            http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "an oversized CONNECT was answered"
        ),
        // h2 may deliver the stream's reset rather than the 431 that preceded it.
        Err(e) => assert!(e.reason().is_some(), "{e:?}"),
    }

    // The same connection still carries a normal CONNECT.
    sender = sender.ready().await.unwrap();
    let (response, mut stream) = sender.send_request(connect_request(echo), false).unwrap();
    let response = timeout(LIMIT, response).await.unwrap().unwrap();
    assert_eq!(response.status(), http::StatusCode::OK);
    stream
        .send_data(bytes::Bytes::from_static(b"hi"), true)
        .unwrap();
    let mut body = response.into_body();
    let echoed = timeout(LIMIT, body.data()).await.unwrap().unwrap().unwrap();
    assert_eq!(&echoed[..], b"hi");
    drop((sender, stream, body));
    conn_task.abort();
}

// ---------- raw frames (h2's client never sends a CONTINUATION flood) ----------

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541 §5.1), the prefix's other bits zero.
fn hpack_int(out: &mut Vec<u8>, mut value: usize, n: u32) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(value as u8);
        return;
    }
    out.push(max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// One header field, literal without indexing, new name (RFC 7541 §6.2.2).
fn hpack_literal(name: &str, value: &str) -> Vec<u8> {
    let mut out = vec![0x00];
    hpack_int(&mut out, name.len(), 7);
    out.extend_from_slice(name.as_bytes());
    hpack_int(&mut out, value.len(), 7);
    out.extend_from_slice(value.as_bytes());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuation_flood_ends_the_connection() {
    let mesh = Mesh::start(H2Settings::default(), vec![]).await;
    let echo = echo_server().await;
    let mut tls = tls_to(&mesh).await;

    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    // A HEADERS frame without END_HEADERS, then CONTINUATION frames that never end it: 40
    // of 1 KiB each. h2 admits as many CONTINUATION frames as the header limit needs at our
    // frame size (5 for 16 KiB); with its default limit (16 MiB) it would admit 320 and keep
    // buffering, and this connection would just wait for more.
    out.extend(frame(HEADERS, 0, 1, &hpack_literal("x-first", "1")));
    let padding = "c".repeat(1000);
    for i in 0..40 {
        let field = hpack_literal(&format!("x-flood-{i}"), &padding);
        out.extend(frame(CONTINUATION, 0, 1, &field));
    }
    // The server may close while we are still writing; what it said is read below.
    let _ = tls.write_all(&out).await;
    let _ = tls.flush().await;

    // Read frames until the server closes (a reset connection counts as closed); note its
    // GOAWAY. Well under the server's keepalive (a PING unanswered for 20 s closes any
    // connection), so only the flood defence can end it in time.
    let mut goaway = None;
    let read_all = async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match tls.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            while buf.len() >= 9 {
                let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
                if buf.len() < 9 + len {
                    break;
                }
                if buf[3] == GOAWAY && len >= 8 {
                    let code = u32::from_be_bytes([buf[13], buf[14], buf[15], buf[16]]);
                    goaway = Some(code);
                }
                buf.drain(..9 + len);
            }
        }
    };
    timeout(Duration::from_secs(5), read_all)
        .await
        .expect("the server did not end a connection flooding it with CONTINUATION frames");
    if let Some(code) = goaway {
        assert_eq!(
            code,
            u32::from(Reason::ENHANCE_YOUR_CALM),
            "GOAWAY code {code}"
        );
    }
    tunnel_works(&mesh, echo).await;
}
