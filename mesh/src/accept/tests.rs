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

// ---------- unix sockets ----------

/// A unix listener on a fresh path; the directory goes with the returned guard.
fn unix_listener() -> (UnixListener, std::path::PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.sock");
    let l = UnixListener::bind(&path).unwrap();
    (l, path, dir)
}

async fn unix_echo(mut s: UnixStream) {
    let mut buf = [0u8; 16];
    while let Ok(n) = s.read(&mut buf).await {
        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

async fn unix_ping(s: &mut UnixStream) -> bool {
    let mut buf = [0u8; 1];
    s.write_all(b"x").await.is_ok() && matches!(s.read(&mut buf).await, Ok(1))
}

#[tokio::test]
async fn unix_max_connections_holds_the_rest_in_the_queue() {
    let (l, path, _dir) = unix_listener();
    let served = Arc::new(AtomicUsize::new(0));
    let counted = served.clone();
    tokio::spawn(
        AcceptLoop::new("test")
            .max_connections(2)
            .run(l, move |s, _| {
                counted.fetch_add(1, Ordering::SeqCst);
                Some(unix_echo(s))
            }),
    );
    let mut first = UnixStream::connect(&path).await.unwrap();
    let mut second = UnixStream::connect(&path).await.unwrap();
    assert!(unix_ping(&mut first).await);
    assert!(unix_ping(&mut second).await);
    // More clients connect (the kernel queues them) but none is served while two are open.
    let mut waiting = Vec::new();
    for _ in 0..5 {
        let mut s = UnixStream::connect(&path).await.unwrap();
        s.write_all(b"x").await.unwrap();
        waiting.push(s);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(served.load(Ordering::SeqCst), 2);
    // Each slot given back lets exactly one more in.
    drop(first);
    let mut buf = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(5), waiting[0].read_exact(&mut buf))
        .await
        .expect("served once a slot was free")
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(served.load(Ordering::SeqCst), 3);
    drop(second);
    drop(waiting);
}

#[tokio::test]
async fn unix_drain_closes_the_listener_and_waits_for_connections() {
    let (l, path, _dir) = unix_listener();
    let (drain, watch) = Drain::new();
    let task = tokio::spawn(
        AcceptLoop::new("test")
            .until(watch)
            .run(l, |s, _| Some(unix_echo(s))),
    );
    let mut open = UnixStream::connect(&path).await.unwrap();
    assert!(unix_ping(&mut open).await);
    drain.start();
    // The listening socket is closed: connecting to its path is refused.
    tokio::time::timeout(Duration::from_secs(5), async {
        while UnixStream::connect(&path).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("listener closed after drain");
    // The open connection still works and the loop waits for it.
    assert!(unix_ping(&mut open).await);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!task.is_finished());
    drop(open);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("loop ends once its connections have")
        .unwrap();
}

#[tokio::test]
async fn unix_drain_deadline_aborts_what_is_left() {
    let (l, path, _dir) = unix_listener();
    let (drain, watch) = Drain::new();
    let task = tokio::spawn(
        AcceptLoop::new("test")
            .until(watch)
            .drain_deadline(Duration::from_millis(100))
            .run(l, |s, _| Some(unix_echo(s))),
    );
    let mut open = UnixStream::connect(&path).await.unwrap();
    assert!(unix_ping(&mut open).await);
    drain.start();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("loop ends at the deadline")
        .unwrap();
    let mut buf = [0u8; 1];
    assert!(matches!(open.read(&mut buf).await, Ok(0) | Err(_)));
}

// ---------- accept errors ----------

/// A listener whose first `failures` accepts fail (as when the process is out of
/// descriptors), then a real unix listener's; counts the calls.
struct Failing {
    inner: UnixListener,
    failures: usize,
    calls: Arc<AtomicUsize>,
}

impl Listener for Failing {
    type Conn = UnixStream;
    type Addr = tokio::net::unix::SocketAddr;

    fn accept_conn(
        &self,
    ) -> impl Future<Output = std::io::Result<(UnixStream, Self::Addr)>> + Send + '_ {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        async move {
            if call < self.failures {
                // Let other tasks run, so that a loop that does not back off spins through
                // many calls instead of starving the test.
                tokio::task::yield_now().await;
                return Err(std::io::Error::from_raw_os_error(nix::libc::EMFILE));
            }
            self.inner.accept().await
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_errors_back_off_then_serving_resumes() {
    let (inner, path, _dir) = unix_listener();
    let calls = Arc::new(AtomicUsize::new(0));
    let failing = Failing {
        inner,
        failures: 6,
        calls: calls.clone(),
    };
    tokio::spawn(AcceptLoop::new("test").run(failing, |s, _| Some(unix_echo(s))));
    // Six failures at one back-off each take 300 ms; a loop that retried at once would have
    // gone through all of them (and been serving) almost at once.
    tokio::time::sleep(Duration::from_millis(120)).await;
    let early = calls.load(Ordering::SeqCst);
    assert!(
        (1..=4).contains(&early),
        "{early} accept calls in 120 ms: the loop does not back off"
    );
    // Once accept works again, connections are served.
    let mut s = UnixStream::connect(&path).await.unwrap();
    let served = tokio::time::timeout(Duration::from_secs(5), unix_ping(&mut s))
        .await
        .expect("served after the errors stopped");
    assert!(served);
    assert!(
        calls.load(Ordering::SeqCst) >= 7,
        "6 failures, then a success"
    );
}
