//! The tonic `AggregatedDiscoveryService`: one task per delta stream runs a [`Session`] against
//! the request stream and the published snapshots. State-of-the-world ADS is not served.
//!
//! With authentication, the caller a stream's token proves is checked against the client its
//! first `Node` claims to be ([`Client::admits`]) before anything is sent: a stream claiming a
//! waypoint it cannot be ends with PERMISSION_DENIED.

use std::sync::Arc;

use amesh_proto::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use amesh_proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use futures::stream::BoxStream;
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn, Instrument};

use super::client::Client;
use super::resources::ResourceSet;
use super::session::Session;
use crate::ca::Caller;

/// Responses queued towards one client. The stream task waits when the client reads slowly,
/// so a stuck client holds at most this many responses (and one snapshot) in memory.
const RESPONSE_QUEUE: usize = 16;

/// The ADS service. Cheap to clone; every stream follows the same snapshot watch.
#[derive(Debug, Clone)]
pub struct AdsServer {
    resources: watch::Receiver<Arc<ResourceSet>>,
    /// When set, every stream must authenticate as a node or a workload (as the CA requires).
    auth: Option<crate::ca::Authenticator>,
    /// The open streams, for the debug listener.
    clients: crate::debug::Clients,
}

impl AdsServer {
    /// Serves the snapshots of `resources`. Streams end (cleanly, status OK) when its sender
    /// is dropped: that is how shutdown lets the server drain.
    pub fn new(resources: watch::Receiver<Arc<ResourceSet>>) -> Self {
        AdsServer {
            resources,
            auth: None,
            clients: crate::debug::Clients::default(),
        }
    }

    /// The streams open now and their state (shared with every clone of this server).
    pub fn clients(&self) -> crate::debug::Clients {
        self.clients.clone()
    }

    /// Requires every stream to authenticate as a node or a workload (waypoints run as their
    /// own ServiceAccount): the config names every workload and policy of the cluster, so only
    /// mesh members may read it.
    pub fn with_auth(mut self, auth: impl Into<crate::ca::Authenticator>) -> Self {
        self.auth = Some(auth.into());
        self
    }

    /// The gRPC service to add to a tonic server.
    pub fn into_service(self) -> AggregatedDiscoveryServiceServer<Self> {
        // Initial syncs of large clusters are big messages; the default 4 MiB limit is for
        // decoding requests, which stay small, so only encoding is raised.
        AggregatedDiscoveryServiceServer::new(self).max_encoding_message_size(usize::MAX)
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsServer {
    type StreamAggregatedResourcesStream = BoxStream<'static, Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream =
        BoxStream<'static, Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        _: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented(
            "amesh-controller serves delta xDS only (DeltaAggregatedResources)",
        ))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let peer = request
            .remote_addr()
            .map_or_else(|| "unknown".to_owned(), |a| a.to_string());
        let caller = match &self.auth {
            Some(auth) => {
                let caller = auth
                    .authenticate(request.metadata())
                    .await
                    .inspect_err(|e| {
                        info!(%peer, reason = e.message(), "xDS: refused an unauthenticated stream");
                    })?;
                debug!(%peer, %caller, "xDS: stream authenticated");
                Some(caller)
            }
            None => None,
        };
        let requests = request.into_inner();
        let (tx, rx) = mpsc::channel(RESPONSE_QUEUE);
        let span = tracing::info_span!("ads", %peer);
        let registration = self.clients.register(&peer);
        tokio::spawn(
            run_stream(requests, caller, self.resources.clone(), tx, registration).instrument(span),
        );
        let out = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        Ok(Response::new(Box::pin(out)))
    }
}

type Responses = mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>;

/// Runs one stream until the client leaves, the transport fails, the snapshots stop or the
/// `caller` (`None`: authentication is off) turns out not to be who its node claims.
async fn run_stream(
    mut requests: Streaming<DeltaDiscoveryRequest>,
    caller: Option<Caller>,
    mut resources: watch::Receiver<Arc<ResourceSet>>,
    tx: Responses,
    registration: crate::debug::Registration,
) {
    let mut session: Option<Session> = None;
    loop {
        tokio::select! {
            request = requests.message() => {
                let request = match request {
                    Ok(Some(request)) => request,
                    Ok(None) => {
                        debug!("xDS: client closed the stream");
                        break;
                    }
                    Err(status) => {
                        debug!("xDS: stream ended: {status}");
                        // A request the server refused to decode (too large, malformed): the
                        // client learns why. On a broken transport nobody is left to tell.
                        let _ = tx.send(Err(status)).await;
                        break;
                    }
                };
                let session = match &mut session {
                    Some(session) => session,
                    None => {
                        let node = request.node.as_ref().map(|n| n.id.clone()).unwrap_or_default();
                        let client = Client::from_node(request.node.as_ref());
                        if let Some(caller) = &caller {
                            // The borrow ends here: it must not be held across the send.
                            let admitted =
                                client.admits(caller, resources.borrow().waypoint_accounts());
                            if let Err(reason) = admitted {
                                warn!(node, %caller, "xDS: refused a stream: {reason}");
                                let _ = tx.send(Err(Status::permission_denied(reason))).await;
                                return;
                            }
                        }
                        info!(node, ?client, "xDS: client connected");
                        session.insert(Session::for_client(node, client))
                    }
                };
                // `borrow`, not `borrow_and_update`: a new snapshot must still wake the
                // other branch, which pushes it to every type subscribed so far.
                let set = resources.borrow().clone();
                let responses = session.on_request(request, &set);
                registration.update(session.status());
                if !send_all(&tx, responses).await {
                    break;
                }
            }
            changed = resources.changed(), if session.is_some() => {
                if changed.is_err() {
                    debug!("xDS: no more snapshots (shutting down), ending the stream");
                    break;
                }
                let set = resources.borrow_and_update().clone();
                if let Some(session) = session.as_mut() {
                    let responses = session.on_update(&set);
                    registration.update(session.status());
                    if !send_all(&tx, responses).await {
                        break;
                    }
                }
            }
        }
    }
    if let Some(session) = session {
        info!(node = session.node_id(), "xDS: client disconnected");
    }
}

/// Queues responses; false once the client is gone.
async fn send_all(tx: &Responses, responses: Vec<DeltaDiscoveryResponse>) -> bool {
    for response in responses {
        debug!(
            type_url = response.type_url,
            nonce = response.nonce,
            resources = response.resources.len(),
            removed = response.removed_resources.len(),
            "xDS: sending"
        );
        if tx.send(Ok(response)).await.is_err() {
            return false;
        }
    }
    true
}
