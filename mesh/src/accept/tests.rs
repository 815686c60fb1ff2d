use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::drain::Drain;

async fn listener() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    (l, addr)
}

/// Echoes one message back, then holds the connection until the client closes it.
async fn echo(mut tcp: TcpStream) {
    let mut buf = [0u8; 16];
    while let Ok(n) = tcp.read(&mut buf).await {
        if n == 0 || tcp.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

async fn ping(tcp: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1];
    tcp.write_all(b"x").await.is_ok() && matches!(tcp.read(&mut buf).await, Ok(1))
}

#[tokio::test]
async fn drain_closes_the_listener_and_waits_for_connections() {
    let (l, addr) = listener().await;
    let (drain, watch) = Drain::new();
    let task = tokio::spawn(
        AcceptLoop::new("test")
            .until(watch)
            .run(l, |tcp, _| Some(echo(tcp))),
    );
    let mut open = TcpStream::connect(addr).await.unwrap();
    assert!(ping(&mut open).await);
    drain.start();
    // The listener goes away: new connections are refused by the kernel.
    tokio::time::timeout(Duration::from_secs(5), async {
        while TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("listener closed after drain");
    // The open connection still works and the loop waits for it.
    assert!(ping(&mut open).await);
    assert!(!task.is_finished());
    drop(open);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("loop ends once its connections have")
        .unwrap();
}

#[tokio::test]
async fn drain_deadline_aborts_what_is_left() {
    let (l, addr) = listener().await;
    let (drain, watch) = Drain::new();
    let task = tokio::spawn(
        AcceptLoop::new("test")
            .until(watch)
            .drain_deadline(Duration::from_millis(100))
            .run(l, |tcp, _| Some(echo(tcp))),
    );
    let mut open = TcpStream::connect(addr).await.unwrap();
    assert!(ping(&mut open).await);
    drain.start();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("loop ends at the deadline")
        .unwrap();
    // The aborted task dropped its socket: the client sees the end.
    let mut buf = [0u8; 1];
    assert!(matches!(open.read(&mut buf).await, Ok(0) | Err(_)));
}

#[tokio::test]
async fn max_connections_holds_the_rest_in_the_queue() {
    let (l, addr) = listener().await;
    let served = Arc::new(AtomicUsize::new(0));
    let counted = served.clone();
    tokio::spawn(
        AcceptLoop::new("test")
            .max_connections(1)
            .run(l, move |tcp, _| {
                counted.fetch_add(1, Ordering::SeqCst);
                Some(echo(tcp))
            }),
    );
    let mut first = TcpStream::connect(addr).await.unwrap();
    assert!(ping(&mut first).await);
    // The second connects (the kernel queues it) but is not served while the first is open.
    let mut second = TcpStream::connect(addr).await.unwrap();
    second.write_all(b"x").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(served.load(Ordering::SeqCst), 1);
    drop(first);
    let mut buf = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(5), second.read_exact(&mut buf))
        .await
        .expect("served once the first closed")
        .unwrap();
    assert_eq!(served.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_refused_connection_is_closed_and_others_served() {
    let (l, addr) = listener().await;
    let mut first = true;
    tokio::spawn(AcceptLoop::new("test").run(l, move |tcp, _| {
        // Refuse only the first connection.
        let refuse = std::mem::replace(&mut first, false);
        (!refuse).then(|| echo(tcp))
    }));
    let mut refused = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 1];
    let _ = refused.write_all(b"x").await;
    assert!(matches!(refused.read(&mut buf).await, Ok(0) | Err(_)));
    let mut served = TcpStream::connect(addr).await.unwrap();
    assert!(ping(&mut served).await);
}

#[tokio::test]
async fn dropping_the_loop_ends_its_connections() {
    let (l, addr) = listener().await;
    let task = tokio::spawn(AcceptLoop::new("test").run(l, |tcp, _| Some(echo(tcp))));
    let mut open = TcpStream::connect(addr).await.unwrap();
    assert!(ping(&mut open).await);
    task.abort();
    let mut buf = [0u8; 1];
    let end = tokio::time::timeout(Duration::from_secs(5), open.read(&mut buf))
        .await
        .expect("connection ended with the loop");
    assert!(matches!(end, Ok(0) | Err(_)));
}
