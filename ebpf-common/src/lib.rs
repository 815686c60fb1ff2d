//! What the capture program (`ebpf/`, in the kernel) and ztunnel (`capture/ebpf.rs`) must agree
//! on: the names of the map and the globals, the listener slots, and the steering decision
//! ([`classify`]), which lives here so that it is unit-tested on the host and compiled into
//! the program unchanged.

#![no_std]

/// The pod's listeners (`SOCKMAP`, index = [`slot`]).
pub const LISTENERS_MAP: &str = "AMESH_LISTENERS";
/// Read-only globals set per pod at load: the pod's address and the kubelet probe source,
/// both `u32` in network byte order (see [`PodEntry`]).
pub const POD_IP4_GLOBAL: &str = "AMESH_POD_IP4";
pub const PROBE_IP4_GLOBAL: &str = "AMESH_PROBE_IP4";
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
    /// Device the packet came in on; loopback for packets sent inside the pod.
    pub ingress_ifindex: u32,
}

/// Where a flow of a captured pod goes: a listener [`slot`], or `None` to let the kernel's own
/// lookup deliver it (to the app, or to nobody) untouched.
///
/// Inside the pod's netns every packet sent by a process of the pod (the app, or ztunnel's
/// sockets) arrives on loopback, either because its destination is local or because the
/// capture's policy route made it local; everything else came from the network. So:
///
/// - from the pod, TCP to anything but the pod itself and 127/8: outbound (53: DNS);
/// - from the pod, UDP to port 53 (any address, as Istio's rules): DNS;
/// - from the network, TCP to the pod's address: HBONE on 15008, else inbound plaintext, but
///   kubelet probes pass;
/// - all else (other UDP, loopback, the app calling itself, ztunnel's own connections to the
///   app, which target the pod's address) is left alone.
pub fn classify(flow: &Flow, pod: &PodEntry) -> Option<u32> {
    let from_pod = flow.ingress_ifindex == LOOPBACK_IFINDEX;
    // The first octet of a network-order address.
    let to_loopback = u32::from_be(flow.local_ip4) >> 24 == 127;
    match flow.protocol {
        IPPROTO_TCP if from_pod => {
            if flow.local_ip4 == pod.ip4 || to_loopback {
                None
            } else if flow.local_port == DNS_PORT {
                Some(slot::DNS_TCP)
            } else {
                Some(slot::OUTBOUND)
            }
        }
        IPPROTO_TCP => {
            if flow.local_ip4 != pod.ip4 || flow.remote_ip4 == pod.probe_ip4 {
                None
            } else if flow.local_port == HBONE_PORT {
                Some(slot::HBONE)
            } else {
                Some(slot::INBOUND_PLAIN)
            }
        }
        IPPROTO_UDP if from_pod && flow.local_port == DNS_PORT => Some(slot::DNS_UDP),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
