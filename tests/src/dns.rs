//! DNS queries from inside a pod, to its resolver (the lab's cluster DNS address; ztunnel's
//! proxy answers instead where the pod is captured), raw or parsed.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData, RecordType};

use crate::MeshLab;

/// A query for `name` (type `kind`), with `id`, as bytes.
pub fn message(name: &str, kind: RecordType, id: u16) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    let name = Name::from_ascii(name).expect("a DNS name");
    m.add_query(Query::query(name, kind));
    m.to_vec().expect("a query encodes")
}

/// Sends `query` from `pod` to its resolver; the answer's bytes.
pub fn exchange(m: &MeshLab, pod: &str, query: Vec<u8>) -> Result<Vec<u8>, String> {
    let netns = m.lab.pod(pod).map_err(|e| e.to_string())?.netns.clone();
    let to = SocketAddr::new(m.lab.state().root_ip.into(), 53);
    lab::netns::run_in(&netns, move || {
        let s = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(3)))
            .map_err(|e| e.to_string())?;
        s.send_to(&query, to).map_err(|e| e.to_string())?;
        let mut buf = [0u8; 1500];
        let n = s.recv(&mut buf).map_err(|e| e.to_string())?;
        Ok(buf[..n].to_vec())
    })
    .map_err(|e| e.to_string())?
}

/// What an answer said.
#[derive(Debug)]
pub struct Answer {
    /// The addresses of its A/AAAA records, sorted.
    pub addresses: Vec<IpAddr>,
    /// The smallest TTL of its records.
    pub ttl: Option<u32>,
    pub authoritative: bool,
    pub response_code: hickory_proto::op::ResponseCode,
}

/// Looks `name` up from `pod` (type `kind`).
pub fn lookup(m: &MeshLab, pod: &str, name: &str, kind: RecordType) -> Result<Answer, String> {
    let bytes = exchange(m, pod, message(name, kind, 0x5151))?;
    let msg = Message::from_vec(&bytes).map_err(|e| e.to_string())?;
    let mut addresses: Vec<IpAddr> = msg
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect();
    addresses.sort();
    Ok(Answer {
        addresses,
        ttl: msg.answers.iter().map(|r| r.ttl).min(),
        authoritative: msg.metadata.authoritative,
        response_code: msg.metadata.response_code,
    })
}
