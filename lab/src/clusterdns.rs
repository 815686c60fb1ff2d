//! The lab's stand-in for the cluster's DNS (CoreDNS): the nameserver every pod's resolv.conf
//! names, and the upstream ztunnel's DNS proxy forwards to. It answers from the manifests
//! folder as CoreDNS answers from the API: `<service>.<namespace>.svc.cluster.local` → the
//! Service's ClusterIP (a headless Service: its ready pods' addresses), NXDOMAIN for any other
//! name, at once. Without it, a pod's search-list lookups would each wait for a nameserver
//! that is not there.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use k8s_openapi::api::core::v1::Pod;
use tokio::net::UdpSocket;

use crate::loaded::LoadedManifests;

/// Seconds a record may be cached.
const TTL: u32 = 5;

/// Pause after a failed receive before the next one.
const RECV_BACKOFF: std::time::Duration = std::time::Duration::from_millis(10);

/// The cluster's domain.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// Serves DNS over UDP on `addr` from the manifests in `manifests`, until the process ends.
pub async fn run(manifests: PathBuf, addr: SocketAddr) -> std::io::Result<()> {
    let manifests = LoadedManifests::new(manifests);
    let socket = UdpSocket::bind(addr).await?;
    tracing::info!(%addr, "cluster DNS listening");
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(e) => {
                // A socket that keeps failing (out of memory, say) must not spin a core: the
                // lab shares the machine with what it measures.
                tracing::debug!(error = %e, "receiving a query failed");
                tokio::time::sleep(RECV_BACKOFF).await;
                continue;
            }
        };
        let Ok(query) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        if query.metadata.message_type != MessageType::Query {
            continue;
        }
        let reply = answer(&manifests, &query);
        if let Ok(bytes) = reply.to_vec() {
            let _ = socket.send_to(&bytes, from).await;
        }
    }
}

/// The answer to one query, from the manifests as they are now.
pub fn answer(manifests: &LoadedManifests, query: &Message) -> Message {
    let mut reply = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    let Some(q) = query.queries.first() else {
        reply.metadata.response_code = ResponseCode::FormErr;
        return reply;
    };
    reply.add_query(q.clone());
    let name = q
        .name()
        .to_ascii()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    match addresses(manifests, &name) {
        None => reply.metadata.response_code = ResponseCode::NXDomain,
        Some(ips) => {
            reply.metadata.authoritative = true;
            if q.query_type() == RecordType::A {
                for ip in ips {
                    reply.add_answer(Record::from_rdata(q.name().clone(), TTL, RData::A(A(ip))));
                }
            }
        }
    }
    reply
}

/// The addresses of a Service's name, `None` if no Service has it.
fn addresses(manifests: &LoadedManifests, name: &str) -> Option<Vec<Ipv4Addr>> {
    let suffix = format!(".svc.{CLUSTER_DOMAIN}");
    let (service, namespace) = name.strip_suffix(&suffix)?.split_once('.')?;
    if namespace.contains('.') {
        return None;
    }
    let m = manifests.get();
    let key = controller::manifests::ObjectKey::new(namespace, service);
    let spec = m.services.get(&key)?.spec.clone().unwrap_or_default();
    match spec.cluster_ip.as_deref() {
        Some("None") => {
            let selector = spec.selector.unwrap_or_default();
            let ready = |pod: &&Pod| {
                pod.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            };
            Some(
                m.pods
                    .iter()
                    .filter(|(k, _)| k.namespace == namespace)
                    .map(|(_, p)| p)
                    .filter(|p| {
                        let labels = p.metadata.labels.clone().unwrap_or_default();
                        !selector.is_empty()
                            && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
                    })
                    .filter(ready)
                    .filter_map(|p| p.status.as_ref()?.pod_ip.as_deref()?.parse().ok())
                    .collect(),
            )
        }
        Some(ip) => Some(ip.parse().ok().into_iter().collect()),
        None => Some(Vec::new()),
    }
}
