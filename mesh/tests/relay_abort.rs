//! A relay that stops without a word (its task aborted: what the kernel sees when the proxy
//! is killed) must reset the sockets it carried, never end them with a FIN that looks like a
//! complete transfer; a relay that ends normally still ends with a FIN after every byte.

use std::io::ErrorKind;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(30);

/// A connected pair on loopback: (the end the test holds, the end the relay gets).
async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (held, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (held.unwrap(), accepted.unwrap().0)
}

/// Reads until EOF or an error: the bytes read, and the error if the end was one.
async fn read_to_end(s: &mut TcpStream) -> (u64, Option<std::io::Error>) {
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0;
    loop {
        match s.read(&mut buf).await {
            Ok(0) => return (total, None),
            Ok(n) => total += n as u64,
            Err(e) => return (total, Some(e)),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_relay_resets_the_app_instead_of_ending_cleanly() {
    let (mut app, app_side) = pair().await;
    let (mut server, server_side) = pair().await;
    let relay = tokio::spawn(mesh::hbone::relay_tcp(app_side, server_side));
    // The server streams (bounded: far more than the sockets buffer) while the app reads.
    let writer = tokio::spawn(async move {
        let chunk = vec![7u8; 64 << 10];
        for _ in 0..4096 {
            if server.write_all(&chunk).await.is_err() {
                return true;
            }
        }
        false
    });
    let mut first = vec![0u8; 1 << 20];
    timeout(LIMIT, app.read_exact(&mut first))
        .await
        .unwrap()
        .unwrap();
    // The proxy vanishes mid-transfer.
    relay.abort();
    let (_, end) = timeout(LIMIT, read_to_end(&mut app)).await.unwrap();
    let end = end.expect("the app saw a clean end of a transfer that was cut");
    assert_eq!(end.kind(), ErrorKind::ConnectionReset, "{end}");
    // The server's side was cut too, so it stops writing.
    assert!(
        timeout(LIMIT, writer).await.unwrap().unwrap(),
        "the server never noticed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_relay_resets_the_server_mid_upload() {
    let (mut app, app_side) = pair().await;
    let (mut server, server_side) = pair().await;
    let relay = tokio::spawn(mesh::hbone::relay_tcp(app_side, server_side));
    // The app uploads (bounded) while the server reads; bytes sit in both directions' way.
    let uploader = tokio::spawn(async move {
        let chunk = vec![9u8; 64 << 10];
        for _ in 0..4096 {
            if app.write_all(&chunk).await.is_err() {
                return true;
            }
        }
        false
    });
    let mut first = vec![0u8; 1 << 20];
    timeout(LIMIT, server.read_exact(&mut first))
        .await
        .unwrap()
        .unwrap();
    relay.abort();
    let (_, end) = timeout(LIMIT, read_to_end(&mut server)).await.unwrap();
    let end = end.expect("the server saw a clean end of an upload that was cut");
    assert_eq!(end.kind(), ErrorKind::ConnectionReset, "{end}");
    assert!(
        timeout(LIMIT, uploader).await.unwrap().unwrap(),
        "the app never noticed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_ends_normally_delivers_every_byte_then_a_fin() {
    const LEN: u64 = 8 << 20;
    let (mut app, app_side) = pair().await;
    let (mut server, server_side) = pair().await;
    let relay = tokio::spawn(mesh::hbone::relay_tcp(app_side, server_side));
    tokio::spawn(async move {
        let chunk = vec![7u8; 64 << 10];
        for _ in 0..LEN / chunk.len() as u64 {
            server.write_all(&chunk).await.unwrap();
        }
        server.shutdown().await.unwrap();
        // Keep the socket until the app's own FIN, as a polite server does.
        let _ = server.read(&mut [0u8; 1]).await;
    });
    app.shutdown().await.unwrap();
    let (read, end) = timeout(LIMIT, read_to_end(&mut app)).await.unwrap();
    assert!(end.is_none(), "{end:?}");
    assert_eq!(read, LEN);
    let stats = timeout(LIMIT, relay).await.unwrap().unwrap();
    assert!(stats.error.is_none(), "{:?}", stats.error);
    assert_eq!(stats.received, LEN);
}
