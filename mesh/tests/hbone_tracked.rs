//! The HBONE server tracks every stream's handler: drain waits for them, and the drain
//! deadline ends them, so none outlives the server that started it.

mod hbone_support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hbone_support::{server_id, Mesh};
use mesh::hbone::{ConnectHandler, ConnectRequest, Drain, H2Settings, PendingTunnel, Server};
use tokio::net::TcpListener;
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(30);

/// Answers every CONNECT, then keeps its stream and never ends on its own (a handler stuck
/// on something other than its stream: an app that never answers, a slow lookup).
struct Stuck {
    started: Arc<AtomicBool>,
    ended: Arc<AtomicBool>,
}

/// Sets its flag when dropped: the handler's task has ended (finished or aborted).
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

impl ConnectHandler for Stuck {
    async fn handle(&self, _req: ConnectRequest, tunnel: PendingTunnel) {
        let _ended = SetOnDrop(self.ended.clone());
        let _stream = tunnel.accept();
        self.started.store(true, Ordering::SeqCst);
        std::future::pending::<()>().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_stream_handler_outlives_the_drain_deadline() {
    let mesh = Mesh::start(H2Settings::default(), vec![]).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (started, ended) = (Arc::default(), Arc::default());
    let server = Server::new(
        Arc::new(mesh.tls.server_config(&server_id()).unwrap()),
        Stuck {
            started: Arc::clone(&started),
            ended: Arc::clone(&ended),
        },
        H2Settings::default(),
    );
    let (drain, watch) = Drain::new();
    let serving = tokio::spawn(server.serve(listener, watch, Duration::from_millis(300)));
    let mut req = mesh.request("127.0.0.1:9".parse().unwrap());
    req.address = addr;
    let _tunnel = timeout(LIMIT, mesh.pool.connect(req))
        .await
        .unwrap()
        .unwrap();
    timeout(LIMIT, async {
        while !started.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the handler never ran");

    drain.start();
    timeout(LIMIT, serving)
        .await
        .expect("the server ignored its drain deadline")
        .unwrap();
    // The server is done, and so is every task it started. An aborted connection task drops
    // its handlers' set, which aborts them without waiting: their drops run on a worker just
    // after, so give them a moment (a detached handler would never end at all).
    let ended_soon = timeout(Duration::from_secs(2), async {
        while !ended.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        ended_soon.is_ok(),
        "a stream handler outlived its server's drain"
    );
}
