//! The task that owns the ADS stream: connect, send the subscriptions, answer every response
//! through [`AdsState`], and on any failure keep the last good config and reconnect with
//! backoff.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use amesh_proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use amesh_proto::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Endpoint;
use tracing::{debug, info, warn};

use super::backoff::Backoff;
use super::config::XdsConfig;
use super::error::{error_chain, XdsError};
use super::handler::ResourceHandler;
use super::state::{AdsState, Verdict};
use super::status::XdsStatus;

/// HTTP/2 PING interval: finds a controller that vanished without a FIN/RST (node lost,
/// partition) instead of waiting on a dead stream forever.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a PING may go unanswered before the connection counts as dead.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// ACKs and NACKs waiting for the transport. One is queued per response and the stream reads
/// the next response only after queueing, so this bounds memory if the server stops reading.
const REQUEST_QUEUE: usize = 8;

/// A delta-ADS client, built and checked but not yet running; [`XdsClient::spawn`] starts it.
pub struct XdsClient {
    address: String,
    endpoint: Endpoint,
    connect_timeout: Duration,
    /// `authorization` and `clusterid`, validated once at construction.
    headers: Vec<(&'static str, MetadataValue<Ascii>)>,
    /// Re-read at each connect; overrides the `authorization` header in `headers`.
    token_file: Option<std::path::PathBuf>,
    state: AdsState,
    handler: Arc<dyn ResourceHandler>,
    backoff: Backoff,
    /// Published after every change; the handle's readers see the latest snapshot.
    status: watch::Sender<XdsStatus>,
}

/// Control of a running client. Dropping it (or [`XdsHandle::shutdown`]) stops the client; the
/// handler keeps whatever it last applied.
pub struct XdsHandle {
    status: watch::Receiver<XdsStatus>,
    /// Sent, or dropped with the handle: either way the task sees it and ends.
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// Builds a client from `config` and starts it on the current tokio runtime.
pub fn spawn(config: XdsConfig, handler: Arc<dyn ResourceHandler>) -> Result<XdsHandle, XdsError> {
    Ok(XdsClient::new(config, handler)?.spawn())
}

impl XdsClient {
    /// Checks `config` (address, header values, at least one type); connects only once spawned.
    pub fn new(config: XdsConfig, handler: Arc<dyn ResourceHandler>) -> Result<Self, XdsError> {
        let XdsConfig {
            address,
            root,
            node,
            type_urls,
            initial_backoff,
            max_backoff,
            connect_timeout,
            token,
            token_file,
            cluster_id,
        } = config;
        if type_urls.is_empty() {
            return Err(XdsError::NoTypes);
        }
        let endpoint = crate::control::endpoint(&address, root.as_ref(), connect_timeout)
            .map_err(|e| XdsError::InvalidAddress {
                address: address.clone(),
                reason: e.to_string(),
            })?
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        let mut headers = Vec::new();
        if let Some(token) = token {
            let value = MetadataValue::try_from(format!("Bearer {token}"))
                .map_err(|_| XdsError::InvalidHeader { what: "token" })?;
            headers.push(("authorization", value));
        }
        if let Some(cluster_id) = cluster_id {
            let value = MetadataValue::try_from(cluster_id)
                .map_err(|_| XdsError::InvalidHeader { what: "cluster id" })?;
            headers.push(("clusterid", value));
        }
        let state = AdsState::new(node, &type_urls);
        let (status, _) = watch::channel(XdsStatus {
            address: address.clone(),
            types: state.type_status(),
            ..Default::default()
        });
        Ok(XdsClient {
            address,
            endpoint,
            connect_timeout,
            headers,
            token_file,
            state,
            handler,
            backoff: Backoff::new(initial_backoff, max_backoff),
            status,
        })
    }

    /// Starts the client on the current tokio runtime.
    pub fn spawn(self) -> XdsHandle {
        let status = self.status.subscribe();
        let (shutdown, stop) = oneshot::channel();
        let task = tokio::spawn(self.run(stop));
        XdsHandle {
            status,
            shutdown,
            task,
        }
    }

    /// Streams, and reconnects after each failure, until `stop` fires or its sender is dropped.
    async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        info!(address = %self.address, "xDS: connecting");
        loop {
            let mut healthy = false;
            let error = tokio::select! {
                _ = &mut stop => break,
                error = self.stream(&mut healthy) => error,
            };
            // A stream that delivered config was a working connection: start over from the
            // short delay, a controller restart is then picked up quickly.
            if healthy {
                self.backoff.reset();
            }
            let delay = self.backoff.next_delay();
            warn!(
                address = %self.address,
                "xDS: {error}; keeping the last good config, reconnecting in {delay:?}"
            );
            self.publish(|s| {
                s.connected = false;
                s.last_error = Some(error.to_string());
                *s.terminations
                    .entry(error.termination_reason())
                    .or_default() += 1;
            });
            tokio::select! {
                _ = &mut stop => break,
                () = tokio::time::sleep(delay) => {}
            }
        }
        self.publish(|s| s.connected = false);
        debug!(address = %self.address, "xDS: client stopped");
    }

    /// One stream, from connect to its end; returns why it ended. Sets `healthy` once a
    /// response has arrived.
    async fn stream(&mut self, healthy: &mut bool) -> XdsError {
        let connect = tokio::time::timeout(self.connect_timeout, self.endpoint.connect());
        let channel = match connect.await {
            Ok(Ok(channel)) => channel,
            Ok(Err(e)) => return self.connect_error(error_chain(&e)),
            Err(_) => {
                return self
                    .connect_error(format!("no connection within {:?}", self.connect_timeout))
            }
        };

        // The subscriptions go first on the request stream; ACKs and NACKs follow through
        // the queue.
        let (replies, queue) = mpsc::channel::<DeltaDiscoveryRequest>(REQUEST_QUEUE);
        let queued = futures::stream::unfold(queue, |mut queue| async move {
            queue.recv().await.map(|request| (request, queue))
        });
        let requests = futures::stream::iter(self.state.initial_requests()).chain(queued);
        let mut request = tonic::Request::new(requests);
        self.refresh_token();
        for (name, value) in &self.headers {
            request.metadata_mut().insert(*name, value.clone());
        }
        let mut client = AggregatedDiscoveryServiceClient::new(channel);
        let mut responses = match client.delta_aggregated_resources(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => return XdsError::from_status(&self.address, &status),
        };
        let types: Vec<&str> = self.state.type_urls().collect();
        info!(address = %self.address, ?types, "xDS: stream open, subscribed");
        self.publish(|s| {
            s.connected = true;
            s.connections += 1;
        });

        loop {
            let response = match responses.message().await {
                Ok(Some(response)) => response,
                Ok(None) => {
                    return XdsError::Closed {
                        address: self.address.clone(),
                    }
                }
                Err(status) => return XdsError::from_status(&self.address, &status),
            };
            *healthy = true;
            let bytes: usize = response
                .resources
                .iter()
                .filter_map(|r| r.resource.as_ref())
                .map(|any| any.value.len())
                .sum();
            self.status.send_modify(|s| s.message_bytes += bytes as u64);
            let was_synced = self.state.synced();
            let reply = self.state.on_response(response, &*self.handler);
            match &reply.verdict {
                Verdict::Acked {
                    type_url,
                    nonce,
                    upserted,
                    removed,
                } => {
                    debug!(type_url, nonce, upserted, removed, "xDS: applied, ACK");
                    self.publish(|_| {});
                }
                Verdict::Nacked(nack) => {
                    warn!(
                        type_url = nack.type_url,
                        nonce = nack.nonce,
                        "xDS: rejected a response, keeping the previous config (NACK): {}; \
                         check amesh-controller's logs and that its version matches this client's",
                        nack.message
                    );
                    let nack = nack.clone();
                    self.publish(|s| s.last_nack = Some(nack));
                }
            }
            if !was_synced && self.state.synced() {
                info!(address = %self.address, "xDS: initial config applied for every type");
            }
            if replies.send(reply.request).await.is_err() {
                // The transport dropped the request stream: the stream is over.
                return XdsError::Closed {
                    address: self.address.clone(),
                };
            }
        }
    }

    fn connect_error(&self, message: String) -> XdsError {
        XdsError::Connect {
            address: self.address.clone(),
            message,
        }
    }

    /// Refreshes the per-type part of the status from the protocol state, plus `change`.
    /// Takes the current token from `token_file`, if any, into the `authorization` header.
    fn refresh_token(&mut self) {
        let Some(path) = &self.token_file else {
            return;
        };
        let read = std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|t| {
                MetadataValue::try_from(format!("Bearer {}", t.trim()))
                    .map_err(|_| "not a valid header value".to_owned())
            });
        match read {
            Ok(value) => {
                self.headers.retain(|(name, _)| *name != "authorization");
                self.headers.push(("authorization", value));
            }
            Err(e) => warn!(
                file = %path.display(),
                error = %e,
                "xDS: cannot read the token file; sending the last token read"
            ),
        }
    }

    fn publish(&self, change: impl FnOnce(&mut XdsStatus)) {
        let types = self.state.type_status();
        let synced = self.state.synced();
        self.status.send_modify(|status| {
            status.types = types;
            status.synced = synced;
            change(status);
        });
    }
}

impl fmt::Debug for XdsHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XdsHandle")
            .field("status", &*self.status.borrow())
            .finish_non_exhaustive()
    }
}

impl XdsHandle {
    /// The client's state now.
    pub fn status(&self) -> XdsStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every status change (admin pages, tests waiting for a state).
    pub fn watch_status(&self) -> watch::Receiver<XdsStatus> {
        self.status.clone()
    }

    /// Every subscribed type has had a response applied: the readiness probe's question.
    pub fn is_synced(&self) -> bool {
        self.status.borrow().synced
    }

    /// Resolves once every subscribed type has had a response applied (at once if that
    /// already happened); `Err(Stopped)` if the client stops first. The future does not borrow
    /// the handle, so a readiness task can own it.
    pub fn wait_synced(&self) -> impl Future<Output = Result<(), XdsError>> + Send + 'static {
        let mut status = self.status.clone();
        async move {
            status
                .wait_for(|s| s.synced)
                .await
                .map(|_| ())
                .map_err(|_| XdsError::Stopped)
        }
    }

    /// Stops the client and waits for its task to end (closing the stream).
    pub async fn shutdown(self) {
        // An Err means the task already ended; nothing left to stop.
        let _ = self.shutdown.send(());
        if let Err(e) = self.task.await {
            warn!("xDS: client task ended abnormally: {e}");
        }
    }
}
