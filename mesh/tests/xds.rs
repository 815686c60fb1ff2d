//! The delta-ADS client against a real tonic ADS server on 127.0.0.1: wildcard subscription,
//! ACK and NACK, reconnect with `initial_resource_versions`, removals, the server going away
//! and coming back, shutdown. Every wait is bounded; readiness comes from channels, not sleeps.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use amesh_proto::envoy::config::core::v3::Node;
use amesh_proto::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use amesh_proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use amesh_proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};
use futures::stream::BoxStream;
use mesh::xds::{self, Nack, ResourceHandler, XdsConfig, XdsError, XdsHandle, XdsStatus};
use parking_lot::Mutex;
use prost_types::value::Kind;
use prost_types::{Any, Struct, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status, Streaming};

/// Bound of every single wait.
const WAIT: Duration = Duration::from_secs(10);
/// Bound of a whole test.
const TEST: Duration = Duration::from_secs(30);

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

// ---------------------------------------------------------------------------------------------
// Test ADS server

/// One client stream as the test drives it. Dropping it ends the stream cleanly (trailers OK).
struct ServerStream {
    headers: tonic::metadata::MetadataMap,
    requests: Streaming<DeltaDiscoveryRequest>,
    responses: mpsc::UnboundedSender<Result<DeltaDiscoveryResponse, Status>>,
}

impl ServerStream {
    async fn next_request(&mut self) -> DeltaDiscoveryRequest {
        within("a request from the client", self.requests.message())
            .await
            .expect("request stream failed")
            .expect("request stream ended")
    }

    /// The subscriptions that open a stream, checked for order and wildcard.
    async fn subscriptions(&mut self) -> [DeltaDiscoveryRequest; 2] {
        let address = self.next_request().await;
        let authorization = self.next_request().await;
        assert_eq!(address.type_url, ADDRESS_TYPE_URL);
        assert_eq!(authorization.type_url, AUTHORIZATION_TYPE_URL);
        for request in [&address, &authorization] {
            assert_eq!(request.resource_names_subscribe, ["*"]);
            assert!(request.response_nonce.is_empty() && request.error_detail.is_none());
        }
        let node = address.node.as_ref().expect("node on the first request");
        assert_eq!(node.id, node_id());
        assert_eq!(node.cluster, "Kubernetes");
        [address, authorization]
    }

    fn send(&self, response: DeltaDiscoveryResponse) {
        self.responses
            .send(Ok(response))
            .expect("client stream still open");
    }

    /// Sends `response` and returns the client's answer to it.
    async fn exchange(&mut self, response: DeltaDiscoveryResponse) -> DeltaDiscoveryRequest {
        let (type_url, nonce) = (response.type_url.clone(), response.nonce.clone());
        self.send(response);
        let answer = self.next_request().await;
        assert_eq!(answer.type_url, type_url);
        assert_eq!(answer.response_nonce, nonce);
        assert!(answer.node.is_none() && answer.resource_names_subscribe.is_empty());
        answer
    }

    /// Sends `response` and checks the client ACKs it.
    async fn expect_ack(&mut self, response: DeltaDiscoveryResponse) {
        let answer = self.exchange(response).await;
        assert_eq!(answer.error_detail, None, "expected an ACK");
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Hands every delta stream to the test.
struct TestAds {
    streams: mpsc::UnboundedSender<ServerStream>,
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for TestAds {
    type StreamAggregatedResourcesStream = BoxStream<'static, Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream =
        BoxStream<'static, Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        _: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented(
            "state-of-the-world ADS is not served",
        ))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let (responses, queue) = mpsc::unbounded_channel();
        let stream = ServerStream {
            headers: request.metadata().clone(),
            requests: request.into_inner(),
            responses,
        };
        self.streams
            .send(stream)
            .map_err(|_| Status::unavailable("test server is stopping"))?;
        let out = futures::stream::unfold(queue, |mut queue| async move {
            queue.recv().await.map(|item| (item, queue))
        });
        Ok(Response::new(Box::pin(out)))
    }
}

/// A tonic server on loopback that can be stopped and started again on the same port.
struct TestServer {
    addr: SocketAddr,
    streams: mpsc::UnboundedReceiver<ServerStream>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl TestServer {
    async fn start(addr: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, streams) = mpsc::unbounded_channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let serve = tonic::transport::Server::builder()
            .add_service(AggregatedDiscoveryServiceServer::new(TestAds {
                streams: tx,
            }))
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                async {
                    let _ = stopped.await;
                },
            );
        let task = tokio::spawn(async move { serve.await.expect("test server failed") });
        TestServer {
            addr,
            streams,
            stop,
            task,
        }
    }

    fn uri(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn next_stream(&mut self) -> ServerStream {
        within("a client stream", self.streams.recv())
            .await
            .expect("server running")
    }

    /// Stops listening, ends every stream (the test must have dropped its own), and waits
    /// until the server is gone. Returns the port's address for a restart.
    async fn stop(self) -> SocketAddr {
        let _ = self.stop.send(());
        // Streams not yet taken by the test end here, with the receiver.
        drop(self.streams);
        within("the server to stop", self.task).await.unwrap();
        self.addr
    }
}

// ---------------------------------------------------------------------------------------------
// Test handler

/// One call of the handler, as the test sees it.
#[derive(Debug)]
struct Applied {
    type_url: String,
    upserts: Vec<(String, String)>,
    removed: Vec<String>,
    accepted: bool,
}

/// A config store: (type, name) → version. Refuses, all or nothing, any response that carries
/// a resource named `bad*`.
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
        let pairs: Vec<(String, String)> = upserts
            .iter()
            .map(|r| (r.name.clone(), r.version.clone()))
            .collect();
        let bad = pairs.iter().find(|(name, _)| name.starts_with("bad"));
        let result = match bad {
            Some((name, _)) => Err(format!("resource {name}: unknown field `color`")),
            None => {
                let mut held = self.held.lock();
                for name in removed {
                    held.remove(&(type_url.to_string(), name.clone()));
                }
                for (name, version) in &pairs {
                    held.insert((type_url.to_string(), name.clone()), version.clone());
                }
                Ok(())
            }
        };
        let _ = self.calls.send(Applied {
            type_url: type_url.to_string(),
            upserts: pairs,
            removed: removed.to_vec(),
            accepted: result.is_ok(),
        });
        result
    }
}

impl Store {
    fn snapshot(&self) -> BTreeMap<(String, String), String> {
        self.held.lock().clone()
    }
}

// ---------------------------------------------------------------------------------------------
// Harness

struct Harness {
    server: TestServer,
    client: XdsHandle,
    store: Arc<Store>,
    calls: mpsc::UnboundedReceiver<Applied>,
}

fn node_id() -> String {
    xds::ztunnel_node_id([10, 0, 0, 7].into(), "ztunnel-x1", "istio-system")
}

fn config(uri: String) -> XdsConfig {
    let metadata = Struct {
        fields: BTreeMap::from([(
            "NAMESPACE".to_string(),
            Value {
                kind: Some(Kind::StringValue("istio-system".into())),
            },
        )]),
    };
    let node = Node {
        id: node_id(),
        cluster: "Kubernetes".into(),
        metadata: Some(metadata),
        ..Default::default()
    };
    let mut config = XdsConfig::new(uri, node);
    // Fast reconnects keep the tests short; the doubling is covered by unit tests.
    config.initial_backoff = Duration::from_millis(10);
    config.max_backoff = Duration::from_millis(100);
    config.connect_timeout = Duration::from_secs(2);
    config.token = Some("node-token".into());
    config.cluster_id = Some("Kubernetes".into());
    config
}

impl Harness {
    async fn start() -> Self {
        let server = TestServer::start("127.0.0.1:0".parse().unwrap()).await;
        let (tx, calls) = mpsc::unbounded_channel();
        let store = Arc::new(Store {
            held: Mutex::new(BTreeMap::new()),
            calls: tx,
        });
        let client = xds::spawn(config(server.uri()), store.clone()).unwrap();
        Harness {
            server,
            client,
            store,
            calls,
        }
    }

    async fn applied(&mut self) -> Applied {
        within("a handler call", self.calls.recv())
            .await
            .expect("handler alive")
    }

    /// First stream, subscriptions, then Address {a1 v1, a2 v1} and Authorization {p1 v1}
    /// applied and ACKed.
    async fn synced(&mut self) -> ServerStream {
        let mut stream = self.server.next_stream().await;
        stream.subscriptions().await;
        stream
            .expect_ack(address("n1", &[("a1", "v1"), ("a2", "v1")], &[]))
            .await;
        stream
            .expect_ack(authorization("n2", &[("p1", "v1")], &[]))
            .await;
        within("sync", self.client.wait_synced()).await.unwrap();
        assert_eq!(self.applied().await.type_url, ADDRESS_TYPE_URL);
        assert_eq!(self.applied().await.type_url, AUTHORIZATION_TYPE_URL);
        stream
    }

    async fn status_where(&self, what: &str, f: impl FnMut(&XdsStatus) -> bool) -> XdsStatus {
        let mut status = self.client.watch_status();
        let snapshot = within(what, status.wait_for(f))
            .await
            .expect("client running")
            .clone();
        snapshot
    }
}

fn response(
    type_url: &str,
    nonce: &str,
    upserts: &[(&str, &str)],
    removed: &[&str],
) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        system_version_info: format!("sys-{nonce}"),
        resources: upserts
            .iter()
            .map(|(name, version)| Resource {
                name: name.to_string(),
                version: version.to_string(),
                resource: Some(Any {
                    type_url: type_url.to_string(),
                    value: Vec::new(),
                }),
                ..Default::default()
            })
            .collect(),
        type_url: type_url.to_string(),
        nonce: nonce.to_string(),
        removed_resources: removed.iter().map(|s| s.to_string()).collect(),
    }
}

fn address(nonce: &str, upserts: &[(&str, &str)], removed: &[&str]) -> DeltaDiscoveryResponse {
    response(ADDRESS_TYPE_URL, nonce, upserts, removed)
}

fn authorization(
    nonce: &str,
    upserts: &[(&str, &str)],
    removed: &[&str],
) -> DeltaDiscoveryResponse {
    response(AUTHORIZATION_TYPE_URL, nonce, upserts, removed)
}

fn versions(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

fn held(entries: &[(&str, &str, &str)]) -> BTreeMap<(String, String), String> {
    entries
        .iter()
        .map(|(t, n, v)| ((t.to_string(), n.to_string()), v.to_string()))
        .collect()
}

/// What the store holds after [`Harness::synced`].
fn synced_store() -> BTreeMap<(String, String), String> {
    held(&[
        (ADDRESS_TYPE_URL, "a1", "v1"),
        (ADDRESS_TYPE_URL, "a2", "v1"),
        (AUTHORIZATION_TYPE_URL, "p1", "v1"),
    ])
}

async fn bounded(test: impl Future<Output = ()>) {
    tokio::time::timeout(TEST, test)
        .await
        .expect("test took too long");
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn subscribes_wildcard_with_node_and_acks_each_response() {
    bounded(async {
        let mut h = Harness::start().await;
        let mut stream = h.server.next_stream().await;
        assert_eq!(stream.header("authorization"), Some("Bearer node-token"));
        assert_eq!(stream.header("clusterid"), Some("Kubernetes"));
        let [address_sub, authorization_sub] = stream.subscriptions().await;
        assert!(address_sub.initial_resource_versions.is_empty());
        assert!(authorization_sub.node.is_none());
        let node = address_sub.node.expect("node");
        assert!(node
            .metadata
            .is_some_and(|m| m.fields.contains_key("NAMESPACE")));
        assert!(!h.client.is_synced());

        stream.send(address("n1", &[("a1", "v1"), ("a2", "v1")], &[]));
        let applied = h.applied().await;
        assert_eq!(applied.type_url, ADDRESS_TYPE_URL);
        assert_eq!(
            applied.upserts,
            [("a1".into(), "v1".into()), ("a2".into(), "v1".into())]
        );
        assert!(applied.accepted && applied.removed.is_empty());
        let ack = stream.next_request().await;
        assert_eq!(
            (ack.type_url.as_str(), ack.response_nonce.as_str()),
            (ADDRESS_TYPE_URL, "n1")
        );
        assert_eq!(ack.error_detail, None);
        assert!(!h.client.is_synced(), "Authorization has not arrived yet");

        stream
            .expect_ack(authorization("n2", &[("p1", "v1")], &[]))
            .await;
        within("sync", h.client.wait_synced()).await.unwrap();
        assert_eq!(h.store.snapshot(), synced_store());

        let status = h.client.status();
        assert!(status.connected && status.synced);
        assert_eq!(status.address, h.server.uri());
        assert_eq!(status.connections, 1);
        let counts: Vec<(usize, u64)> =
            status.types.iter().map(|t| (t.resources, t.acks)).collect();
        assert_eq!(counts, [(2, 1), (1, 1)]);
        assert_eq!(status.types[0].system_version, "sys-n1");
        assert_eq!(status.last_nack, None);
    })
    .await;
}

#[tokio::test]
async fn rejected_response_is_nacked_and_previous_state_kept() {
    bounded(async {
        let mut h = Harness::start().await;
        let mut stream = h.synced().await;

        let nack = stream
            .exchange(address("n3", &[("a1", "v2"), ("bad-1", "v2")], &["a2"]))
            .await;
        let detail = nack.error_detail.expect("a NACK");
        assert_eq!(detail.code, 3, "INVALID_ARGUMENT");
        assert!(
            detail
                .message
                .contains("resource bad-1: unknown field `color`"),
            "{}",
            detail.message
        );
        assert!(!h.applied().await.accepted);
        assert_eq!(h.store.snapshot(), synced_store());

        let status = h.client.status();
        assert_eq!(
            status.last_nack,
            Some(Nack {
                type_url: ADDRESS_TYPE_URL.into(),
                nonce: "n3".into(),
                message: detail.message.clone(),
            })
        );
        assert_eq!((status.types[0].nacks, status.types[0].resources), (1, 2));
        assert!(status.synced, "a NACK does not undo readiness");

        // The client keeps working after a NACK: a good update is applied and ACKed.
        stream.expect_ack(address("n4", &[("a1", "v2")], &[])).await;
        assert!(h.applied().await.accepted);
        assert_eq!(
            h.store.snapshot()[&(ADDRESS_TYPE_URL.into(), "a1".into())],
            "v2"
        );
    })
    .await;
}

#[tokio::test]
async fn reconnect_reports_acked_versions_not_nacked_ones() {
    bounded(async {
        let mut h = Harness::start().await;
        let mut stream = h.synced().await;
        let nack = stream
            .exchange(address("n3", &[("a1", "v2"), ("bad-1", "v1")], &[]))
            .await;
        assert!(nack.error_detail.is_some());
        assert!(!h.applied().await.accepted);

        // The server breaks the stream with an error status.
        stream
            .responses
            .send(Err(Status::unavailable("controller restarting")))
            .unwrap();
        let mut stream = h.server.next_stream().await;
        let [address_sub, authorization_sub] = stream.subscriptions().await;
        assert_eq!(
            address_sub.initial_resource_versions,
            versions(&[("a1", "v1"), ("a2", "v1")])
        );
        assert_eq!(
            authorization_sub.initial_resource_versions,
            versions(&[("p1", "v1")])
        );
        let status = h
            .status_where("the second stream", |s| s.connections == 2)
            .await;
        assert!(
            status
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("controller restarting")),
            "{status:?}"
        );
        // Nothing was re-applied or dropped across the reconnect.
        assert_eq!(h.store.snapshot(), synced_store());
        assert!(h.calls.try_recv().is_err(), "the handler was left alone");

        // The server ends the stream cleanly this time; same story.
        drop(stream);
        let mut stream = h.server.next_stream().await;
        let [address_sub, _] = stream.subscriptions().await;
        assert_eq!(
            address_sub.initial_resource_versions,
            versions(&[("a1", "v1"), ("a2", "v1")])
        );
        let status = h
            .status_where("the third stream", |s| s.connections == 3 && s.connected)
            .await;
        assert!(
            status
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("closed the stream")),
            "{status:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn removal_reaches_the_handler_and_is_forgotten() {
    bounded(async {
        let mut h = Harness::start().await;
        let mut stream = h.synced().await;

        stream.expect_ack(address("n3", &[], &["a2"])).await;
        let applied = h.applied().await;
        assert_eq!(applied.removed, ["a2"]);
        assert!(applied.upserts.is_empty() && applied.accepted);
        assert_eq!(
            h.store.snapshot(),
            held(&[
                (ADDRESS_TYPE_URL, "a1", "v1"),
                (AUTHORIZATION_TYPE_URL, "p1", "v1"),
            ])
        );
        assert_eq!(h.client.status().types[0].resources, 1);

        drop(stream);
        let mut stream = h.server.next_stream().await;
        let [address_sub, authorization_sub] = stream.subscriptions().await;
        assert_eq!(
            address_sub.initial_resource_versions,
            versions(&[("a1", "v1")])
        );
        assert_eq!(
            authorization_sub.initial_resource_versions,
            versions(&[("p1", "v1")])
        );
    })
    .await;
}

#[tokio::test]
async fn keeps_config_while_the_server_is_down_and_resyncs_after_restart() {
    bounded(async {
        let mut h = Harness::start().await;
        let stream = h.synced().await;

        drop(stream);
        let Harness {
            server,
            client,
            store,
            mut calls,
        } = h;
        let addr = server.stop().await;
        let mut watch = client.watch_status();
        let down = within(
            "a failed reconnect",
            watch.wait_for(|s| {
                !s.connected
                    && s.last_error
                        .as_deref()
                        .is_some_and(|e| e.contains("cannot connect"))
            }),
        )
        .await
        .unwrap()
        .clone();
        let error = down.last_error.unwrap();
        assert!(
            error.contains(&format!(
                "is amesh-controller running and reachable at http://{addr}"
            )),
            "{error}"
        );
        assert!(down.synced, "the last good config still serves");
        assert_eq!(store.snapshot(), synced_store());
        assert!(calls.try_recv().is_err(), "the handler was left alone");

        // Same port again: the client finds it, reports what it holds, and takes the update.
        let mut server = TestServer::start(addr).await;
        let mut stream = server.next_stream().await;
        let [address_sub, _] = stream.subscriptions().await;
        assert_eq!(
            address_sub.initial_resource_versions,
            versions(&[("a1", "v1"), ("a2", "v1")])
        );
        stream
            .expect_ack(address("m1", &[("a1", "v3")], &["a2"]))
            .await;
        stream.expect_ack(authorization("m2", &[], &[])).await;
        let applied = within("the resync", calls.recv()).await.unwrap();
        assert_eq!(applied.upserts, [("a1".into(), "v3".into())]);
        assert_eq!(applied.removed, ["a2"]);
        assert_eq!(
            store.snapshot(),
            held(&[
                (ADDRESS_TYPE_URL, "a1", "v3"),
                (AUTHORIZATION_TYPE_URL, "p1", "v1"),
            ])
        );
        let status = client.status();
        assert!(status.connected);
        assert_eq!(status.types[0].acks, 2);
    })
    .await;
}

#[tokio::test]
async fn shutdown_and_drop_close_the_stream() {
    bounded(async {
        let mut h = Harness::start().await;
        let mut stream = h.synced().await;
        let Harness {
            mut server, client, ..
        } = h;
        within("shutdown", client.shutdown()).await;
        let end = within("the stream to end", stream.requests.message()).await;
        assert!(!matches!(end, Ok(Some(_))), "{end:?}");

        // Dropping the handle stops a client just as well.
        let (tx, _calls) = mpsc::unbounded_channel();
        let store = Arc::new(Store {
            held: Mutex::new(BTreeMap::new()),
            calls: tx,
        });
        let client = xds::spawn(config(server.uri()), store).unwrap();
        let mut stream = server.next_stream().await;
        stream.subscriptions().await;
        drop(client);
        let end = within("the stream to end", stream.requests.message()).await;
        assert!(!matches!(end, Ok(Some(_))), "{end:?}");
    })
    .await;
}

#[tokio::test]
async fn wait_synced_fails_once_the_client_has_stopped() {
    bounded(async {
        let mut h = Harness::start().await;
        let _stream = h.server.next_stream().await;
        let synced = h.client.wait_synced();
        within("shutdown", h.client.shutdown()).await;
        let result = within("wait_synced", synced).await;
        assert!(matches!(result, Err(XdsError::Stopped)), "{result:?}");
    })
    .await;
}

#[tokio::test]
async fn bad_settings_are_refused_up_front() {
    let store = Arc::new(Store {
        held: Mutex::new(BTreeMap::new()),
        calls: mpsc::unbounded_channel().0,
    });
    let err = xds::spawn(config("not a uri".into()), store.clone()).err();
    assert!(
        matches!(err, Some(XdsError::InvalidAddress { .. })),
        "{err:?}"
    );

    let mut bad_token = config("http://127.0.0.1:1".into());
    bad_token.token = Some("line\nbreak".into());
    let err = xds::spawn(bad_token, store.clone()).err();
    assert!(
        matches!(err, Some(XdsError::InvalidHeader { what: "token" })),
        "{err:?}"
    );

    let mut no_types = config("http://127.0.0.1:1".into());
    no_types.type_urls.clear();
    let err = xds::spawn(no_types, store).err();
    assert!(matches!(err, Some(XdsError::NoTypes)), "{err:?}");
}
