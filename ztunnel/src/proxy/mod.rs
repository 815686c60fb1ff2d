//! The proxy flows of one captured pod: outbound (15001), inbound HBONE (15008) and inbound
//! plaintext (15006). Each accepted connection is one task; config is read from the current
//! immutable snapshot, never under a lock shared across connections.

pub mod inbound;
pub mod inbound_plain;
pub mod outbound;
mod same_pod;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use mesh::certs::CertManager;
use mesh::hbone::{H2Settings, Pool};
use mesh::state::StateStore;
use mesh::tls::TlsContext;
use mesh::Identity;

use crate::destination::Destination;
use crate::dns::Resolvers;
use crate::limits::{Limits, PodDnsLimits};
use crate::metrics::Metrics;
use crate::netns::Netns;
use crate::sockets::InPodSockets;

/// Node-wide pieces every pod's proxy shares.
pub struct Shared {
    /// Workloads, services and policies (xDS or local file).
    pub state: StateStore,
    /// Certificates and trust roots for HBONE.
    pub tls: TlsContext,
    /// Keeps the certificates of local pods' identities fresh; `None` when certificates are
    /// provisioned some other way (tests).
    pub certs: Option<CertManager>,
    pub metrics: Arc<Metrics>,
    pub settings: H2Settings,
    /// Packet mark of every socket ztunnel opens in a pod.
    pub mark: u32,
    /// Name of this node, as the config knows it.
    pub node: String,
    /// Bounds on work peers cause before proving anything.
    pub limits: Limits,
    /// Where DNS queries ztunnel does not answer go.
    pub resolvers: Resolvers,
    /// The cluster's DNS domain (`cluster.local`), for service hostnames.
    pub cluster_domain: String,
    /// Whether pods' DNS goes to ztunnel's DNS proxy (`ISTIO_META_DNS_CAPTURE`).
    pub dns_capture: bool,
}

/// A captured pod, as the CNI plugin (or the state file) described it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct PodInfo {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub ip: IpAddr,
    /// Path of the pod's network namespace.
    pub netns: std::path::PathBuf,
}

/// A captured pod with its runtime handles.
pub struct Pod {
    pub info: PodInfo,
    pub identity: Identity,
    pub netns: Netns,
    pub sockets: InPodSockets,
    /// HBONE connections leaving this pod (created in its netns, with its certificate).
    pub pool: Pool,
    /// Inbound connections reach the app from the client's address (IP_TRANSPARENT); works
    /// only where the pod's policy route brings the app's replies back to ztunnel.
    pub original_source: bool,
    /// How captured connections tell where they were going (set by the capture backend).
    pub destination: Destination,
    /// This pod's share of DNS proxy work.
    pub dns: PodDnsLimits,
}

impl Pod {
    pub fn new(
        shared: &Shared,
        info: PodInfo,
        netns: Netns,
        original_source: bool,
    ) -> Result<Pod, mesh::IdentityError> {
        let identity = Identity::new(
            shared.tls.trust_domain(),
            &info.namespace,
            &info.service_account,
        )?;
        let sockets = InPodSockets::new(netns.clone(), shared.mark);
        let pool = Pool::new(
            Arc::new(shared.tls.clone()),
            Arc::new(sockets.clone()),
            shared.settings.clone(),
        );
        Ok(Pod {
            info,
            identity,
            netns,
            sockets,
            pool,
            original_source,
            destination: Destination::default(),
            dns: PodDnsLimits::new(&shared.limits.settings),
        })
    }

    /// The address an inbound connection to the app leaves from: the client's (port chosen by
    /// the kernel) or, without original source, whatever the kernel picks.
    pub(crate) fn upstream_source(&self, client: IpAddr) -> Option<SocketAddr> {
        self.original_source.then(|| SocketAddr::new(client, 0))
    }
}

/// Accepts on `listener` until `drain` fires, running `handle` for each connection in its own
/// task with a span naming the flow, the pod and the peer. The connections are tracked
/// ([`mesh::accept::AcceptLoop`]): after drain the loop waits for them, and stopping the
/// pod's tasks ends them.
pub(crate) async fn accept_loop<F, Fut>(
    listener: tokio::net::TcpListener,
    drain: mesh::hbone::DrainWatch,
    flow: &'static str,
    pod: Arc<Pod>,
    handle: F,
) where
    F: Fn(tokio::net::TcpStream, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    use tracing::Instrument;
    mesh::accept::AcceptLoop::new(flow)
        .until(drain)
        // The app's small writes and ours must not wait for ACKs (Nagle).
        .nodelay()
        .run(listener, |tcp, peer| {
            let span = tracing::debug_span!("conn", flow, pod = %pod.info.name, %peer);
            Some(handle(tcp, peer).instrument(span))
        })
        .await
}

#[cfg(test)]
mod tests;
