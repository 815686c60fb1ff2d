//! Names and addresses of a lab, all derived from its id (names) and its index (addresses), so
//! that labs running side by side never collide and a crashed lab's leftovers can be found by
//! name alone.
//!
//! # Address plan
//!
//! Lab number `i` (0 ≤ i < 64) owns `10.(128+i).0.0/16`; with `X = 128 + i`:
//!
//! | range | what |
//! |---|---|
//! | `10.X.0.0/24` | node network on the bridge in the lab's root netns |
//! | `10.X.0.N` | node `nodeN` (N = 1..=100), `eth0` in the node netns |
//! | `10.X.0.254` | the root netns itself (`br0`): where lab-wide processes (controller) listen |
//! | `10.X.N.0/24` | pod CIDR of node N, the range of its `host-local` IPAM: `.1` is the node end of every pod veth (ptp's gateway), pods get `.2` ..= `.254` |
//! | `10.X.128.0/17` | Service ClusterIPs (VIPs), from `10.X.128.1` up |
//! | `fd00:10:X::/64`, `fd00:10:X:N::/64` | dual-stack labs only: the node network (`::N` node N, `::fe` the root) and node N's IPv6 pod CIDR |
//!
//! # Names
//!
//! Lab id `ID` (`[a-z0-9]{1,12}`, random ones are `l` + 4 hex digits). Network namespaces:
//! `amesh-ID-root`, `amesh-ID-nodeN`, `amesh-ID-<pod namespace>.<pod name>` (a Kubernetes
//! namespace never contains a dot, a node or `root` never does, so the forms cannot clash).
//! Interfaces live only inside those namespaces, so their names need no lab id: `br0` and
//! `nodeN` (root), `eth0` (node and pod), and the node ends of pod veths as ptp names them (`veth` + 8 hex digits).

use std::fmt;
use std::io::Read;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

/// Every lab network namespace starts with this.
pub const NETNS_PREFIX: &str = "amesh-";
/// Number of labs that can exist at once on one machine (each owns a /16).
pub const MAX_LABS: u8 = 64;
/// Nodes per lab: node pod CIDRs `10.X.1.0/24` ..= `10.X.100.0/24` stay below the service range.
pub const MAX_NODES: usize = 100;
/// Pods per node: `.2` ..= `.254` of the node's /24.
pub const MAX_PODS_PER_NODE: usize = 253;
/// Bridge in the root netns that connects the nodes.
pub const BRIDGE: &str = "br0";
/// Interface name of the pod's and the node's uplink inside their own netns.
pub const UPLINK: &str = "eth0";

const MAX_ID_LEN: usize = 12;
const BASE_OCTET: u8 = 128;

/// A malformed id, index or name.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("invalid lab id {0:?}: use 1 to 12 characters of [a-z0-9]")]
    BadId(String),
    #[error("lab index {0} out of range: at most {MAX_LABS} labs can exist at once")]
    BadIndex(u8),
    #[error("node number {0} out of range 1..={MAX_NODES}")]
    BadNode(usize),
    #[error(
        "pod slot {slot} on node {node} out of range: at most {MAX_PODS_PER_NODE} pods per node"
    )]
    BadPodSlot { node: usize, slot: usize },
    #[error("service VIP #{0} out of range 10.X.128.0/17")]
    BadService(usize),
}

/// The id of a lab: the root of all its names.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LabId(String);

impl LabId {
    /// Validates an explicit id.
    pub fn new(id: &str) -> Result<Self, PlanError> {
        let ok = !id.is_empty()
            && id.len() <= MAX_ID_LEN
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if ok {
            Ok(LabId(id.to_string()))
        } else {
            Err(PlanError::BadId(id.to_string()))
        }
    }

    /// A fresh id `l` + 4 hex digits; the caller still checks it is not in use.
    pub fn random() -> Self {
        let mut b = [0u8; 2];
        // /dev/urandom only fails on a broken system; then time and pid still spread ids.
        if std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut b))
            .is_err()
        {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let v = (nanos ^ std::process::id()) as u16;
            b = v.to_be_bytes();
        }
        LabId(format!("l{:02x}{:02x}", b[0], b[1]))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `amesh-ID-`: every netns of this lab starts with it.
    pub fn netns_prefix(&self) -> String {
        format!("{NETNS_PREFIX}{}-", self.0)
    }

    /// The lab's private root netns, holding the bridge.
    pub fn root_netns(&self) -> String {
        format!("{}root", self.netns_prefix())
    }

    /// The netns of a node (`node` is the node name, e.g. `node1`).
    pub fn node_netns(&self, node: &str) -> String {
        format!("{}{node}", self.netns_prefix())
    }

    /// The netns of a pod. Very long names are shortened with a hash so that paths stay sane.
    pub fn pod_netns(&self, namespace: &str, pod: &str) -> String {
        let full = format!("{}{namespace}.{pod}", self.netns_prefix());
        if full.len() <= 100 {
            return full;
        }
        let hash = fnv1a(format!("{namespace}/{pod}").as_bytes());
        format!(
            "{}{:.80}-{hash:016x}",
            self.netns_prefix(),
            format!("{namespace}.{pod}")
        )
    }
}

impl fmt::Display for LabId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for LabId {
    type Err = PlanError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        LabId::new(s)
    }
}

impl TryFrom<String> for LabId {
    type Error = PlanError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        LabId::new(&s)
    }
}

impl From<LabId> for String {
    fn from(id: LabId) -> String {
        id.0
    }
}

/// The lab id a network namespace name belongs to, if it is a lab netns.
pub fn lab_of_netns(netns: &str) -> Option<LabId> {
    let rest = netns.strip_prefix(NETNS_PREFIX)?;
    let (id, tail) = rest.split_once('-')?;
    if tail.is_empty() {
        return None;
    }
    LabId::new(id).ok()
}

/// The name of a node: `node1`, `node2`, ...
pub fn node_name(n: usize) -> String {
    format!("node{n}")
}

/// The name, in the root netns, of the bridge port of node `n`.
pub fn node_port(n: usize) -> String {
    node_name(n)
}

/// The addresses of lab number `index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressPlan {
    index: u8,
}

impl AddressPlan {
    pub fn new(index: u8) -> Result<Self, PlanError> {
        if index < MAX_LABS {
            Ok(AddressPlan { index })
        } else {
            Err(PlanError::BadIndex(index))
        }
    }

    pub fn index(&self) -> u8 {
        self.index
    }

    fn x(&self) -> u8 {
        BASE_OCTET + self.index
    }

    /// Everything of this lab: `10.X.0.0/16`.
    pub fn lab_cidr(&self) -> Ipv4Net {
        net(Ipv4Addr::new(10, self.x(), 0, 0), 16)
    }

    /// The node network on the bridge: `10.X.0.0/24`.
    pub fn node_cidr(&self) -> Ipv4Net {
        net(Ipv4Addr::new(10, self.x(), 0, 0), 24)
    }

    /// Address of node `n` (1-based) on the bridge.
    pub fn node_ip(&self, n: usize) -> Result<Ipv4Addr, PlanError> {
        check_node(n)?;
        Ok(Ipv4Addr::new(10, self.x(), 0, n as u8))
    }

    /// Address of the root netns on the bridge (`10.X.0.254`).
    pub fn root_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.x(), 0, 254)
    }

    /// Pod CIDR of node `n`: `10.X.n.0/24`.
    pub fn pod_cidr(&self, n: usize) -> Result<Ipv4Net, PlanError> {
        check_node(n)?;
        Ok(net(Ipv4Addr::new(10, self.x(), n as u8, 0), 24))
    }

    /// IP of the pod in `slot` (0-based) on node `n`: `10.X.n.(slot+2)`.
    pub fn pod_ip(&self, n: usize, slot: usize) -> Result<Ipv4Addr, PlanError> {
        check_node(n)?;
        if slot >= MAX_PODS_PER_NODE {
            return Err(PlanError::BadPodSlot { node: n, slot });
        }
        Ok(Ipv4Addr::new(10, self.x(), n as u8, (slot + 2) as u8))
    }

    /// IPv6, for a dual-stack lab: the node network `fd00:10:X::/64` (hex X).
    pub fn node_cidr6(&self) -> Ipv6Net {
        Ipv6Net::new(
            Ipv6Addr::new(0xfd00, 0x10, u16::from(self.x()), 0, 0, 0, 0, 0),
            64,
        )
        .expect("constant prefix length is valid")
    }

    /// IPv6 address of node `n` on the bridge: `fd00:10:X::n`.
    pub fn node_ip6(&self, n: usize) -> Result<Ipv6Addr, PlanError> {
        check_node(n)?;
        Ok(Ipv6Addr::new(
            0xfd00,
            0x10,
            u16::from(self.x()),
            0,
            0,
            0,
            0,
            n as u16,
        ))
    }

    /// IPv6 address of the root netns on the bridge: `fd00:10:X::fe`.
    pub fn root_ip6(&self) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0x10, u16::from(self.x()), 0, 0, 0, 0, 0xfe)
    }

    /// IPv6 pod CIDR of node `n`: `fd00:10:X:n::/64`.
    pub fn pod_cidr6(&self, n: usize) -> Result<Ipv6Net, PlanError> {
        check_node(n)?;
        Ok(Ipv6Net::new(
            Ipv6Addr::new(0xfd00, 0x10, u16::from(self.x()), n as u16, 0, 0, 0, 0),
            64,
        )
        .expect("constant prefix length is valid"))
    }

    /// The Service ClusterIP range: `10.X.128.0/17`.
    pub fn service_cidr(&self) -> Ipv4Net {
        net(Ipv4Addr::new(10, self.x(), 128, 0), 17)
    }

    /// The `k`-th (0-based) ClusterIP: `10.X.128.1` + k.
    pub fn service_ip(&self, k: usize) -> Result<Ipv4Addr, PlanError> {
        let base = u32::from(self.service_cidr().network());
        // The last address of the /17 is its broadcast address: keep it free.
        if k >= (1 << 15) - 2 {
            return Err(PlanError::BadService(k));
        }
        Ok(Ipv4Addr::from(base + 1 + k as u32))
    }
}

fn check_node(n: usize) -> Result<(), PlanError> {
    if (1..=MAX_NODES).contains(&n) {
        Ok(())
    } else {
        Err(PlanError::BadNode(n))
    }
}

fn net(addr: Ipv4Addr, prefix: u8) -> Ipv4Net {
    // Prefixes here are constants ≤ 32, which is the only way `new` can fail.
    Ipv4Net::new(addr, prefix).expect("constant prefix length is valid")
}

/// FNV-1a: a stable, dependency-free hash for derived names (never for security).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A stable UUID-shaped uid for an object key.
pub(crate) fn uid_of(key: &str) -> String {
    let a = fnv1a(key.as_bytes());
    let b = fnv1a(format!("{key}#uid").as_bytes());
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        b >> 52,
        b & 0xffff_ffff_ffff
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_validated() {
        assert!(LabId::new("l1a2b").is_ok());
        assert!(LabId::new("").is_err());
        assert!(LabId::new("a-b").is_err());
        assert!(LabId::new("ABC").is_err());
        assert!(LabId::new("abcdefghijklm").is_err());
        let r = LabId::random();
        assert_eq!(r.as_str().len(), 5);
        assert!(LabId::new(r.as_str()).is_ok());
    }

    #[test]
    fn netns_names_round_trip_to_their_lab() {
        let id = LabId::new("t1").unwrap();
        assert_eq!(id.root_netns(), "amesh-t1-root");
        assert_eq!(id.node_netns("node2"), "amesh-t1-node2");
        assert_eq!(id.pod_netns("default", "web-1"), "amesh-t1-default.web-1");
        for ns in [id.root_netns(), id.pod_netns("a", "b")] {
            assert_eq!(lab_of_netns(&ns), Some(id.clone()));
        }
        assert_eq!(lab_of_netns("amesh-"), None);
        assert_eq!(lab_of_netns("other-t1-root"), None);
        let long = id.pod_netns("ns", &"p".repeat(250));
        assert!(
            long.len() <= 120 && long.starts_with("amesh-t1-ns.p"),
            "{long}"
        );
    }

    #[test]
    fn interface_names_fit_ifnamsiz() {
        assert!(node_port(MAX_NODES).len() <= 15);
    }

    #[test]
    fn address_plan() {
        let p = AddressPlan::new(3).unwrap();
        assert_eq!(p.lab_cidr().to_string(), "10.131.0.0/16");
        assert_eq!(p.node_ip(2).unwrap(), Ipv4Addr::new(10, 131, 0, 2));
        assert_eq!(p.root_ip(), Ipv4Addr::new(10, 131, 0, 254));
        assert_eq!(p.pod_cidr(2).unwrap().to_string(), "10.131.2.0/24");
        assert_eq!(p.pod_ip(2, 0).unwrap(), Ipv4Addr::new(10, 131, 2, 2));
        assert_eq!(p.pod_ip(2, 252).unwrap(), Ipv4Addr::new(10, 131, 2, 254));
        assert!(p.pod_ip(2, 253).is_err());
        assert!(p.node_ip(0).is_err() && p.node_ip(101).is_err());
        assert_eq!(p.service_ip(0).unwrap(), Ipv4Addr::new(10, 131, 128, 1));
        assert!(p.service_cidr().contains(&p.service_ip(32765).unwrap()));
        assert!(p.service_ip(32766).is_err());
        assert!(!p.service_cidr().contains(&p.pod_ip(100, 252).unwrap()));
        assert!(AddressPlan::new(MAX_LABS).is_err());
        assert_eq!(
            AddressPlan::new(63).unwrap().lab_cidr().to_string(),
            "10.191.0.0/16"
        );
    }
}
