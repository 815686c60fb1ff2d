//! What the capture program (`ebpf/`, in the kernel) and ztunnel (`capture/ebpf.rs`) must agree
//! on: the names of the map and the globals, the listener slots, and the steering decision
//! ([`classify`]), which lives here so that it is unit-tested on the host and compiled into
//! the program unchanged.

#![no_std]

pub mod hops;

/// The pod's listeners (`SOCKMAP`, index = [`slot`]).
pub const LISTENERS_MAP: &str = "AMESH_LISTENERS";
/// ztunnel's own open connections to the app from clients' addresses ([`BypassKey`] → any
/// byte).
pub const BYPASS_MAP: &str = "AMESH_BYPASS";
/// Capacity of [`BYPASS_MAP`]: ztunnel's connections to one pod's apps from clients' addresses
/// open at the same time. The map allocates an entry when it is added
/// ([`BPF_F_NO_PREALLOC`]), so the capacity costs nothing until used.
pub const MAX_BYPASS: u32 = 65536;
/// Map flag: entries are allocated on insert instead of all at load.
pub const BPF_F_NO_PREALLOC: u32 = 1;
/// Read-only globals set per pod at load: the pod's address and the kubelet probe source,
/// both `u32` in network byte order (see [`PodEntry`]).
pub const POD_IP4_GLOBAL: &str = "AMESH_POD_IP4";
pub const PROBE_IP4_GLOBAL: &str = "AMESH_PROBE_IP4";
/// Read-only global: non-zero when ztunnel's DNS proxy takes the pod's DNS (see [`PodEntry`]).
pub const DNS_GLOBAL: &str = "AMESH_DNS";
/// Name of the `sk_lookup` program in the object file.
pub const PROGRAM: &str = "amesh_sk_lookup";

/// Which of a pod's listeners a flow goes to.
pub mod slot {
    /// Outbound TCP (15001).
    pub const OUTBOUND: u32 = 0;
    /// Inbound plaintext TCP (15006).
    pub const INBOUND_PLAIN: u32 = 1;
    /// Inbound HBONE (15008).
    pub const HBONE: u32 = 2;
    /// DNS over TCP (15053).
    pub const DNS_TCP: u32 = 3;
    /// DNS over UDP (15053).
    pub const DNS_UDP: u32 = 4;
}
/// Number of listener slots per pod.
pub const SLOTS: u32 = 5;

/// Destination port of HBONE: inbound flows to it go to the HBONE listener.
pub const HBONE_PORT: u32 = 15008;
/// DNS: outbound UDP and TCP to this port go to the DNS listeners.
pub const DNS_PORT: u32 = 53;

/// What the program knows of its pod, to tell inbound from outbound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodEntry {
    /// The pod's IPv4 address in network byte order (as `bpf_sk_lookup.local_ip4`).
    pub ip4: u32,
    /// Source address of kubelet probes (network byte order): inbound TCP from it reaches the
    /// app directly, as in Istio's in-pod rules.
    pub probe_ip4: u32,
    /// Non-zero when the DNS proxy is on: DNS goes to the DNS listeners. Zero: UDP DNS is left
    /// alone and TCP DNS is outbound TCP like any other.
    pub dns: u32,
}

/// A connection ztunnel opens to the app from a client's address (original source): to the
/// kernel it looks exactly like that client connecting from the network, so ztunnel lists it
/// here between `bind` and `connect` and the program lets it through. The entry stays until
/// the connection is closed, not only for the handshake: when the app's listen queue
/// overflows, the kernel answers with a syncookie and keeps no state, and the app's socket is
/// made from whichever of ztunnel's later segments finds room, each looked up like a new flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BypassKey {
    /// Source address, network byte order.
    pub remote_ip4: u32,
    /// Source port, network byte order (as `bpf_sk_lookup.remote_port`).
    pub remote_port: u16,
    /// Always zero.
    pub pad: u16,
    /// Destination port, host byte order.
    pub local_port: u32,
}

impl BypassKey {
    /// The key as the map stores it (userspace writes raw bytes).
    pub fn to_bytes(self) -> [u8; 12] {
        let mut b = [0u8; 12];
        b[0..4].copy_from_slice(&self.remote_ip4.to_ne_bytes());
        b[4..6].copy_from_slice(&self.remote_port.to_ne_bytes());
        b[8..12].copy_from_slice(&self.local_port.to_ne_bytes());
        b
    }
}

/// `AF_INET`: the only family captured (ztunnel's in-pod listeners are IPv4).
pub const AF_INET: u32 = 2;
pub const IPPROTO_TCP: u32 = 6;
pub const IPPROTO_UDP: u32 = 17;
/// The loopback device has this index in every network namespace.
pub const LOOPBACK_IFINDEX: u32 = 1;

/// The parts of a socket lookup that decide where it goes (fields of `bpf_sk_lookup`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    pub protocol: u32,
    /// Destination address, network byte order.
    pub local_ip4: u32,
    /// Destination port, host byte order.
    pub local_port: u32,
    /// Source address, network byte order.
    pub remote_ip4: u32,
    /// Source port, network byte order.
    pub remote_port: u16,
    /// Device the packet came in on; loopback for packets sent inside the pod.
    pub ingress_ifindex: u32,
}

/// Where a flow of a captured pod goes: a listener [`slot`], or `None` to let the kernel's own
/// lookup deliver it (to the app, or to nobody) untouched. `bypassed` says whether a TCP flow
/// to the pod's address is one of ztunnel's own connections to the app (see [`BypassKey`]).
///
/// The kernel reports loopback as the ingress device of a flow that the capture's policy
/// route made local, and the address's own device for anything addressed to the pod itself,
/// whether it came from the network or from inside the pod. So:
///
/// - TCP to anything but the pod itself and 127/8, arriving on loopback: the pod's outbound
///   (port 53: DNS, when the DNS proxy is on);
/// - UDP to port 53 arriving on loopback (any address, as Istio's rules): DNS, when it is on;
/// - TCP to the pod's address: HBONE on 15008, else inbound plaintext; but kubelet probes,
///   the app calling itself and ztunnel's own connections to the app pass;
/// - all else (other UDP, loopback, ICMP) is left alone.
pub fn classify(
    flow: &Flow,
    pod: &PodEntry,
    bypassed: impl FnOnce(&BypassKey) -> bool,
) -> Option<u32> {
    let via_loopback = flow.ingress_ifindex == LOOPBACK_IFINDEX;
    // The first octet of a network-order address.
    let to_loopback = u32::from_be(flow.local_ip4) >> 24 == 127;
    let to_pod = flow.local_ip4 == pod.ip4;
    match flow.protocol {
        IPPROTO_TCP if to_pod => {
            let key = BypassKey {
                remote_ip4: flow.remote_ip4,
                remote_port: flow.remote_port,
                pad: 0,
                local_port: flow.local_port,
            };
            if flow.remote_ip4 == pod.probe_ip4 || flow.remote_ip4 == pod.ip4 || bypassed(&key) {
                None
            } else if flow.local_port == HBONE_PORT {
                Some(slot::HBONE)
            } else {
                Some(slot::INBOUND_PLAIN)
            }
        }
        IPPROTO_TCP if via_loopback && !to_loopback => {
            if flow.local_port == DNS_PORT && pod.dns != 0 {
                Some(slot::DNS_TCP)
            } else {
                Some(slot::OUTBOUND)
            }
        }
        IPPROTO_UDP if via_loopback && flow.local_port == DNS_PORT && pod.dns != 0 => {
            Some(slot::DNS_UDP)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests;
