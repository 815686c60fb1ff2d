//! In-pod hops through SOCKMAP (ebpf capture only): what the `sock_ops` and `sk_msg` programs
//! (`ebpf/src/sockmap.rs`) and ztunnel (`capture/sockmap.rs`) agree on, and the decision of
//! which sockets join the socket hash ([`joins`]), kept here so that it is unit-tested on the
//! host.
//!
//! A hop is one of the two loopback TCP connections between an app and ztunnel inside a
//! captured pod's netns: app → ztunnel's steered outbound socket, and ztunnel's
//! original-source connection → the app. Both ends of a hop are put in one socket hash,
//! keyed by ([netns cookie](HopKey::netns_cookie), local, remote); a `sendmsg` on either end
//! looks up the other end (same cookie, addresses swapped) and, found, hands the bytes to
//! its receive queue directly.

/// The socket hash of hop ends ([`HopKey`] → socket).
pub const HOPS_MAP: &str = "AMESH_HOPS";
/// Captured pods: netns cookie (`u64`) → [`HopPod`]. ztunnel fills it on ADD and restore and
/// empties it on DEL; a socket of a netns that is not in it is never touched.
pub const HOP_PODS_MAP: &str = "AMESH_HOP_PODS";
/// Capacity of [`HOPS_MAP`]: hop ends open on the node at once (two per hop). A hop that
/// finds the hash full stays plain TCP.
pub const MAX_HOPS: u32 = 65536;
/// Capacity of [`HOP_PODS_MAP`]: captured pods per node.
pub const MAX_HOP_PODS: u32 = 1024;
/// Name of the `sock_ops` program in the object.
pub const SOCK_OPS_PROGRAM: &str = "amesh_hop_sockops";
/// Name of the `sk_msg` program in the object.
pub const SK_MSG_PROGRAM: &str = "amesh_hop_sk_msg";

/// One end of a TCP connection in a netns. Addresses in network byte order (as the kernel
/// reports them); ports in host byte order (see [`port_from_remote`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HopKey {
    /// `bpf_get_netns_cookie` of the socket's netns: two pods' sockets never match.
    pub netns_cookie: u64,
    pub local_ip4: u32,
    pub remote_ip4: u32,
    pub local_port: u32,
    pub remote_port: u32,
}

impl HopKey {
    /// The key of the other end of the same connection.
    pub fn peer(&self) -> HopKey {
        HopKey {
            netns_cookie: self.netns_cookie,
            local_ip4: self.remote_ip4,
            remote_ip4: self.local_ip4,
            local_port: self.remote_port,
            remote_port: self.local_port,
        }
    }

    /// The key as the map stores it (userspace reads raw bytes).
    pub fn to_bytes(self) -> [u8; 24] {
        let mut b = [0u8; 24];
        b[0..8].copy_from_slice(&self.netns_cookie.to_ne_bytes());
        b[8..12].copy_from_slice(&self.local_ip4.to_ne_bytes());
        b[12..16].copy_from_slice(&self.remote_ip4.to_ne_bytes());
        b[16..20].copy_from_slice(&self.local_port.to_ne_bytes());
        b[20..24].copy_from_slice(&self.remote_port.to_ne_bytes());
        b
    }
}

/// A captured pod, as the programs see it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HopPod {
    /// The pod's IPv4 address, network byte order.
    pub ip4: u32,
    /// The packet mark of ztunnel's sockets in the pod (its listeners carry it, so the
    /// sockets it accepts do too); the app's sockets do not carry it.
    pub mark: u32,
}

impl HopPod {
    pub fn to_bytes(self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0..4].copy_from_slice(&self.ip4.to_ne_bytes());
        b[4..8].copy_from_slice(&self.mark.to_ne_bytes());
        b
    }
}

/// The `remote_port` of `bpf_sock_ops` and `sk_msg_md` in host order. The kernel stores the
/// port in network order; some kernels also shift it into the upper 16 bits of the `u32`
/// (on little-endian machines), others do not, so both forms are accepted (a port is never 0).
pub fn port_from_remote(raw: u32) -> u32 {
    let be16 = if raw > 0xffff { raw >> 16 } else { raw };
    u32::from(u16::from_be(be16 as u16))
}

/// How a socket became established (`BPF_SOCK_OPS_*_ESTABLISHED_CB`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Established {
    /// It connected (the app's outbound connection, ztunnel's connection to the app).
    Active,
    /// It was accepted.
    Passive,
}

/// Whether a newly established socket of a captured pod's netns joins the hop hash.
///
/// - Active, carrying ztunnel's mark, to the pod's address: ztunnel's connection to the app
///   (inbound delivery, from the client's address).
/// - Active, unmarked, from the pod's address to anything but the pod itself and 127/8: the
///   app's outbound connection, which the capture steered to ztunnel's outbound (or DNS)
///   listener in this netns. Its other end is ztunnel's accepted socket, established a moment
///   later.
/// - Passive, whatever its addresses: only when its other end is already in the hash
///   (`peer_known`). An active end's callback runs when the SYN-ACK arrives, before the ACK
///   that establishes the passive end is even sent, so the passive end of a hop always finds
///   its peer, and a passive socket whose peer is not a hop end (ztunnel's HBONE and inbound
///   sockets, anything the app accepts from the network) never joins.
///
/// Everything else (loopback, the app calling itself, ztunnel's sockets to the network) is
/// left alone. A socket that joins without its peer ever joining only costs the `sk_msg`
/// program's lookup on each send: its bytes take the TCP stack as before.
pub fn joins(
    how: Established,
    pod: &HopPod,
    mark: u32,
    local_ip4: u32,
    remote_ip4: u32,
    peer_known: impl FnOnce() -> bool,
) -> bool {
    let loopback = |ip4: u32| u32::from_be(ip4) >> 24 == 127;
    if loopback(local_ip4) || loopback(remote_ip4) {
        return false;
    }
    let ztunnel = mark == pod.mark;
    match how {
        Established::Active if ztunnel => remote_ip4 == pod.ip4,
        Established::Active => local_ip4 == pod.ip4 && remote_ip4 != pod.ip4,
        Established::Passive => peer_known(),
    }
}

#[cfg(test)]
mod tests;
