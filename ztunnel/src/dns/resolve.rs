//! What the DNS proxy answers itself (sans-IO): A/AAAA for the mesh's service hostnames,
//! short names expanded as the asking pod's namespace and the cluster domain mean them; for a
//! headless Service (no VIP) the addresses of its healthy endpoints, and `<pod>.<service>` for
//! a StatefulSet's pods. Everything else goes upstream.

use std::net::IpAddr;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{RData, Record, RecordType};
use mesh::state::{Service, Snapshot};

/// Seconds an answer may be cached.
const TTL: u32 = 30;

/// Where a query comes from: the asking pod's namespace and the cluster's domain.
#[derive(Clone, Copy, Debug)]
pub struct Zone<'a> {
    pub namespace: &'a str,
    /// `cluster.local` unless configured (`CLUSTER_DOMAIN`).
    pub domain: &'a str,
}

/// What to do with a query.
#[derive(Debug)]
pub enum Resolution {
    /// We know the name: this is the full answer.
    Answer(Message),
    /// Not a mesh name: ask the upstream resolver.
    Forward,
    /// Not a query (a response, or something that is not DNS's QUERY): no answer at all.
    Drop,
}

/// Expands a query name the way a pod in `zone` means it.
pub fn candidates(name: &str, zone: Zone<'_>) -> Vec<String> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let dots = name.matches('.').count();
    let domain = zone.domain;
    let mut out = vec![name.clone()];
    match dots {
        0 => out.push(format!("{name}.{}.svc.{domain}", zone.namespace)),
        1 => out.push(format!("{name}.svc.{domain}")),
        _ if name.ends_with(".svc") => out.push(format!("{name}.{domain}")),
        _ => {}
    }
    out
}

/// The addresses a name stands for in the mesh, if it is a mesh name.
fn addresses(snapshot: &Snapshot, name: &str) -> Option<Vec<IpAddr>> {
    if let Some(service) = snapshot.service_by_host(name) {
        return Some(service_addresses(snapshot, service, None));
    }
    // `<pod>.<headless service host>`: a StatefulSet's pod, by its name (its hostname).
    let (pod, service_host) = name.split_once('.')?;
    let service = snapshot.service_by_host(service_host)?;
    if !service.vips.is_empty() {
        return None;
    }
    let found = service_addresses(snapshot, service, Some(pod));
    (!found.is_empty()).then_some(found)
}

/// A Service's VIPs; for a headless one, its healthy endpoints' addresses (only `pod`'s when
/// given).
fn service_addresses(snapshot: &Snapshot, service: &Service, pod: Option<&str>) -> Vec<IpAddr> {
    if !service.vips.is_empty() {
        return service.vips.iter().map(|v| v.address).collect();
    }
    snapshot
        .endpoints(&service.key())
        .iter()
        .filter(|e| e.workload.healthy)
        .filter(|e| pod.is_none_or(|p| e.workload.name == p))
        .flat_map(|e| e.workload.addresses.iter().copied())
        .collect()
}

/// Resolves one query message against the mesh config.
pub fn resolve(snapshot: &Snapshot, zone: Zone<'_>, query: &Message) -> Resolution {
    if query.metadata.message_type != MessageType::Query {
        return Resolution::Drop;
    }
    if query.metadata.op_code != OpCode::Query {
        return Resolution::Answer(Message::error_msg(
            query.metadata.id,
            query.metadata.op_code,
            ResponseCode::NotImp,
        ));
    }
    let Some(q) = query.queries.first() else {
        return Resolution::Answer(Message::error_msg(
            query.metadata.id,
            query.metadata.op_code,
            ResponseCode::FormErr,
        ));
    };
    if !matches!(q.query_type(), RecordType::A | RecordType::AAAA) {
        return Resolution::Forward;
    }
    let name = q.name().to_ascii();
    let Some(ips) = candidates(&name, zone)
        .iter()
        .find_map(|c| addresses(snapshot, c))
    else {
        return Resolution::Forward;
    };
    let mut answer = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
    answer.metadata.authoritative = true;
    answer.metadata.recursion_desired = query.metadata.recursion_desired;
    answer.metadata.recursion_available = true;
    answer.add_query(q.clone());
    for ip in ips {
        let rdata = match (q.query_type(), ip) {
            (RecordType::A, IpAddr::V4(v4)) => RData::A(A(v4)),
            (RecordType::AAAA, IpAddr::V6(v6)) => RData::AAAA(AAAA(v6)),
            _ => continue,
        };
        answer.add_answer(Record::from_rdata(q.name().clone(), TTL, rdata));
    }
    Resolution::Answer(answer)
}

#[cfg(test)]
mod tests;
