//! Where a captured connection was going: the capture backend decides how that is found
//! ([`Destination`]), the proxy flows read it ([`original_dst`]). Its own module so that
//! `capture` and `proxy` both depend on it instead of on each other.

use std::net::SocketAddr;

/// Where a captured connection's original destination is found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Destination {
    /// Rewritten by NAT (nft REDIRECT): ask conntrack (`SO_ORIGINAL_DST`).
    #[default]
    Conntrack,
    /// Handed over unchanged (eBPF sk_lookup): the accepted socket's local address.
    LocalAddress,
}

/// Reads where a captured connection was originally going.
pub fn original_dst(tcp: &tokio::net::TcpStream, how: Destination) -> std::io::Result<SocketAddr> {
    if how == Destination::LocalAddress {
        return tcp.local_addr();
    }
    let sock = socket2::SockRef::from(tcp);
    // The in-pod listeners are IPv4: ask for that first, without a `getsockname` to find out.
    let addr = match sock.original_dst_v4() {
        Ok(a) => a,
        Err(v4) => sock.original_dst_v6().map_err(|_| v4)?,
    };
    addr.as_socket()
        .ok_or_else(|| std::io::Error::other("original destination is not an IP socket address"))
}
