//! Size of the state a connection keeps for its whole life.

use std::sync::Arc;

use mesh::certs::{CertStore, TrustRoots};
use mesh::hbone::H2Settings;
use mesh::state::StateStore;
use mesh::tls::TlsContext;

use super::{outbound, Pod, PodInfo, Shared};
use crate::metrics::Metrics;
use crate::netns::Netns;

/// Every open outbound connection holds one task with this future for as long as it lives:
/// a regression here multiplies by the number of connections. Large, rarely reached states
/// (dialling a new HBONE connection, opening a stream) are boxed so they do not count, and so
/// are the routes that are not HBONE tunnels (plain, passthrough, same pod), so that a
/// tunnel's task is sized by the tunnel alone: 1,944 bytes before that, 1,576 after.
const OUTBOUND_FUTURE_MAX: usize = 1700;

#[tokio::test]
async fn an_outbound_connection_future_stays_small() {
    let shared = Arc::new(Shared {
        state: StateStore::new(),
        tls: TlsContext::new("cluster.local", CertStore::new(), TrustRoots::empty()).unwrap(),
        certs: None,
        metrics: Arc::new(Metrics::new()),
        settings: H2Settings::default(),
        mark: crate::sockets::DEFAULT_MARK,
        node: "node1".into(),
        limits: Default::default(),
        resolvers: crate::dns::Resolvers::new("/etc/resolv.conf"),
        cluster_domain: "cluster.local".into(),
        dns_capture: true,
    });
    // Our own netns stands in for a pod's: the future is built, never run.
    let netns = Netns::open_own(std::path::Path::new("/proc/self/ns/net")).unwrap();
    let info = PodInfo {
        uid: "uid".into(),
        name: "client".into(),
        namespace: "default".into(),
        service_account: "default".into(),
        ip: "127.0.0.1".parse().unwrap(),
        netns: "/proc/self/ns/net".into(),
    };
    let pod = Arc::new(Pod::new(&shared, info, netns, true).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (tcp, peer) = listener.accept().await.unwrap();
    let future = outbound::handle(shared, pod, tcp, peer);
    let size = std::mem::size_of_val(&future);
    assert!(
        size <= OUTBOUND_FUTURE_MAX,
        "an outbound connection's future grew to {size} bytes (limit {OUTBOUND_FUTURE_MAX})"
    );
}
