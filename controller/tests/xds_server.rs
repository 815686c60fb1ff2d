//! The ADS server against the real delta-ADS client (`mesh::xds`) over gRPC on 127.0.0.1:
//! subscribe and ACK, only changes pushed, a NACKed resource not resent until it changes,
//! reconnect with `initial_resource_versions`, removals. Every wait is bounded.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use amesh_proto::envoy::config::core::v3::Node;
use amesh_proto::envoy::service::discovery::v3::Resource;
use amesh_proto::istio::security::Authorization;
use amesh_proto::AUTHORIZATION_TYPE_URL as AUTHZ;
use controller::xds::{AdsServer, ResourceSet};
use mesh::xds::{self, ResourceHandler, XdsConfig, XdsHandle};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(10);

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// The ADS server on loopback, fed by the test's own snapshot watch.
struct Server {
    addr: SocketAddr,
    set: watch::Sender<Arc<ResourceSet>>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Server {
    async fn start(addr: SocketAddr, set: ResourceSet) -> Self {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = watch::channel(Arc::new(set));
        let (stop, stopped) = oneshot::channel::<()>();
        let serve = tonic::transport::Server::builder()
            .add_service(AdsServer::new(rx).into_service())
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                async {
                    let _ = stopped.await;
                },
            );
        let task = tokio::spawn(async move { serve.await.expect("server failed") });
        Server {
            addr,
            set: tx,
            stop,
            task,
        }
    }

    fn publish(&self, set: ResourceSet) {
        self.set.send_replace(Arc::new(set));
    }

    /// Ends the streams (by closing the snapshot watch, as the controller does) and the server.
    async fn stop(self) -> SocketAddr {
        drop(self.set);
        let _ = self.stop.send(());
        within("the server to stop", self.task).await.unwrap();
        self.addr
    }
}

/// One handler call.
#[derive(Debug)]
struct Applied {
    type_url: String,
    upserts: Vec<String>,
    removed: Vec<String>,
    accepted: bool,
}

/// Holds (type, name) → version; refuses, all or nothing, a response carrying a `*bad*` name.
struct Store {
    held: Mutex<BTreeMap<(String, String), String>>,
    calls: mpsc::UnboundedSender<Applied>,
}

impl ResourceHandler for Store {
    fn apply(
        &self,
        type_url: &str,
        upserts: Vec<Resource>,
        removed: &[String],
    ) -> Result<(), String> {
        let names: Vec<String> = upserts.iter().map(|r| r.name.clone()).collect();
        let result = match names.iter().find(|n| n.contains("bad")) {
            Some(name) => Err(format!("resource {name}: unknown field `color`")),
            None => {
                let mut held = self.held.lock();
                for name in removed {
                    held.remove(&(type_url.to_owned(), name.clone()));
                }
                for r in &upserts {
                    held.insert((type_url.to_owned(), r.name.clone()), r.version.clone());
                }
                Ok(())
            }
        };
        let _ = self.calls.send(Applied {
            type_url: type_url.to_owned(),
            upserts: names,
            removed: removed.to_vec(),
            accepted: result.is_ok(),
        });
        result
    }
}

struct Client {
    handle: XdsHandle,
    store: Arc<Store>,
    calls: mpsc::UnboundedReceiver<Applied>,
}

impl Client {
    fn start(addr: SocketAddr) -> Self {
        let (tx, calls) = mpsc::unbounded_channel();
        let store = Arc::new(Store {
            held: Mutex::new(BTreeMap::new()),
            calls: tx,
        });
        let node = Node {
            id: xds::ztunnel_node_id([127, 0, 0, 1].into(), "ztunnel-test", "istio-system"),
            cluster: "Kubernetes".into(),
            ..Default::default()
        };
        let mut config = XdsConfig::new(format!("http://{addr}"), node);
        config.initial_backoff = Duration::from_millis(10);
        config.max_backoff = Duration::from_millis(100);
        config.connect_timeout = Duration::from_secs(2);
        let handle = xds::spawn(config, store.clone()).unwrap();
        Client {
            handle,
            store,
            calls,
        }
    }

    /// The next handler call for Authorization resources (Address calls are skipped).
    async fn next_authz(&mut self) -> Applied {
        loop {
            let call = within("a handler call", self.calls.recv()).await.unwrap();
            if call.type_url == AUTHZ {
                return call;
            }
        }
    }

    /// Authorization name → version held by the client.
    fn held(&self) -> BTreeMap<String, String> {
        self.store
            .held
            .lock()
            .iter()
            .filter(|((t, _), _)| t == AUTHZ)
            .map(|((_, n), v)| (n.clone(), v.clone()))
            .collect()
    }

    /// Waits until the client holds exactly what `set` serves (for Authorization).
    async fn converges_to(&self, set: &ResourceSet) {
        let want: BTreeMap<String, String> = set
            .get(AUTHZ)
            .map(|m| {
                m.iter()
                    .map(|(n, r)| (n.clone(), r.version.clone()))
                    .collect()
            })
            .unwrap_or_default();
        within("the client to hold the served set", async {
            while self.held() != want {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
    }

    /// No handler call for `quiet`: nothing was sent.
    async fn nothing_more(&mut self, quiet: Duration) {
        if let Ok(Some(call)) = tokio::time::timeout(quiet, self.calls.recv()).await {
            panic!("unexpected push: {call:?}");
        }
    }
}

/// Authorization resources; `rev` changes the content (and so the version).
fn policies(entries: &[(&str, i32)]) -> ResourceSet {
    // No Address at all: the server still answers the client's Address subscription.
    let mut set = ResourceSet::new();
    for (name, rev) in entries {
        let p = Authorization {
            name: (*name).into(),
            namespace: "ns".into(),
            action: *rev,
            dry_run: *rev > 1,
            ..Default::default()
        };
        set.insert(AUTHZ, &format!("ns/{name}"), &p);
    }
    set
}

async fn bounded(test: impl Future<Output = ()>) {
    tokio::time::timeout(Duration::from_secs(30), test)
        .await
        .expect("test took longer than 30 s");
}

#[tokio::test]
async fn subscribe_ack_then_only_changes_and_removals() {
    bounded(async {
        let v1 = policies(&[("a", 0), ("b", 0)]);
        let server = Server::start("127.0.0.1:0".parse().unwrap(), v1.clone()).await;
        let mut client = Client::start(server.addr);
        within("sync", client.handle.wait_synced()).await.unwrap();
        let first = client.next_authz().await;
        assert_eq!(first.upserts, ["ns/a", "ns/b"]);
        assert!(first.accepted);
        client.converges_to(&v1).await;

        // a changes, c appears, b unchanged: only a and c travel.
        let v2 = policies(&[("a", 1), ("b", 0), ("c", 0)]);
        server.publish(v2.clone());
        let push = client.next_authz().await;
        assert_eq!(push.upserts, ["ns/a", "ns/c"]);
        assert!(push.removed.is_empty());
        client.converges_to(&v2).await;

        // Same content again: nothing is sent.
        server.publish(policies(&[("a", 1), ("b", 0), ("c", 0)]));
        client.nothing_more(Duration::from_millis(300)).await;

        // b disappears: a removal, nothing else.
        let v3 = policies(&[("a", 1), ("c", 0)]);
        server.publish(v3.clone());
        let push = client.next_authz().await;
        assert!(push.upserts.is_empty(), "{push:?}");
        assert_eq!(push.removed, ["ns/b"]);
        client.converges_to(&v3).await;

        let status = client.handle.status();
        assert!(status.types.iter().all(|t| t.nacks == 0), "{status:?}");
        client.handle.shutdown().await;
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn nacked_resource_is_not_resent_until_it_changes() {
    bounded(async {
        let v1 = policies(&[("a", 0), ("bad", 0), ("c", 0)]);
        let server = Server::start("127.0.0.1:0".parse().unwrap(), v1.clone()).await;
        let mut client = Client::start(server.addr);

        // The whole first response is refused; the server isolates the bad resource and the
        // good ones still arrive.
        let first = client.next_authz().await;
        assert_eq!(first.upserts, ["ns/a", "ns/bad", "ns/c"]);
        assert!(!first.accepted);
        let mut good = policies(&[("a", 0), ("c", 0)]);
        client.converges_to(&good).await;
        within("sync", client.handle.wait_synced()).await.unwrap();
        // Drain the isolation rounds: every call from now on carrying `bad` is refused, and
        // no call may carry it more than once.
        let mut bad_sent = 0;
        while let Ok(Some(call)) =
            tokio::time::timeout(Duration::from_millis(300), client.calls.recv()).await
        {
            if call.upserts.iter().any(|n| n == "ns/bad") {
                bad_sent += 1;
            }
        }
        assert!(
            bad_sent <= 2,
            "bad resource resent {bad_sent} times while isolating"
        );
        let last_nack = client
            .handle
            .status()
            .last_nack
            .expect("a NACK was recorded");
        assert!(last_nack.message.contains("ns/bad"), "{last_nack:?}");

        // Another resource changes: it alone travels, the refused version stays back.
        good = policies(&[("a", 1), ("c", 0)]);
        server.publish(policies(&[("a", 1), ("bad", 0), ("c", 0)]));
        let push = client.next_authz().await;
        assert_eq!(push.upserts, ["ns/a"]);
        assert!(push.accepted);
        client.converges_to(&good).await;
        client.nothing_more(Duration::from_millis(300)).await;

        // The refused resource changes: it is offered again (and refused again here).
        server.publish(policies(&[("a", 1), ("bad", 1), ("c", 0)]));
        let push = client.next_authz().await;
        assert_eq!(push.upserts, ["ns/bad"]);
        assert!(!push.accepted);
        client.nothing_more(Duration::from_millis(300)).await;

        client.handle.shutdown().await;
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn reconnect_with_initial_versions_gets_only_what_changed() {
    bounded(async {
        let v1 = policies(&[("same", 0), ("edited", 0), ("gone", 0)]);
        let server = Server::start("127.0.0.1:0".parse().unwrap(), v1.clone()).await;
        let mut client = Client::start(server.addr);
        within("sync", client.handle.wait_synced()).await.unwrap();
        assert_eq!(client.next_authz().await.upserts.len(), 3);
        client.converges_to(&v1).await;

        // The controller restarts with a different config while the client keeps its own.
        let addr = server.stop().await;
        let v2 = policies(&[("same", 0), ("edited", 1), ("new", 0)]);
        let server = Server::start(addr, v2.clone()).await;
        let mut status = client.handle.watch_status();
        within(
            "the reconnect",
            status.wait_for(|s| s.connected && s.connections >= 2),
        )
        .await
        .unwrap();
        let push = client.next_authz().await;
        assert_eq!(push.upserts, ["ns/edited", "ns/new"]);
        assert_eq!(push.removed, ["ns/gone"]);
        client.converges_to(&v2).await;
        client.nothing_more(Duration::from_millis(300)).await;

        client.handle.shutdown().await;
        server.stop().await;
    })
    .await;
}
