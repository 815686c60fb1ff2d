//! Sockets ztunnel opens inside pods: the capture listeners and the marked, optionally
//! source-spoofing, connections it makes on a pod's behalf.
//!
//! Every socket carries the packet mark (0x539 by default) so the pod's capture rules let it
//! pass instead of redirecting it back to ztunnel.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};

use crate::netns::Netns;

/// Default packet mark of ztunnel's sockets (Istio's 1337).
pub const DEFAULT_MARK: u32 = 0x539;

fn new_socket(addr: &SocketAddr, ty: Type, proto: Protocol) -> io::Result<Socket> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    // Close-on-exec (socket2 adds it) and non-blocking from `socket` itself: three `fcntl`
    // calls fewer on every connection ztunnel makes to an app.
    Socket::new(domain, ty.nonblocking(), Some(proto))
}

fn set_transparent(s: &Socket, v4: bool) -> io::Result<()> {
    if v4 {
        s.set_ip_transparent_v4(true)
    } else {
        s.set_ip_transparent_v6(true)
    }
}

/// A TCP listener; `transparent` lets it accept connections for addresses that are not local
/// (needed where a policy route delivers foreign destinations, and harmless elsewhere).
pub fn tcp_listener(
    addr: SocketAddr,
    transparent: bool,
    mark: u32,
) -> io::Result<std::net::TcpListener> {
    let s = new_socket(&addr, Type::STREAM, Protocol::TCP)?;
    s.set_reuse_address(true)?;
    if transparent {
        set_transparent(&s, addr.is_ipv4())?;
    }
    s.set_mark(mark)?;
    s.bind(&SockAddr::from(addr))?;
    s.listen(1024)?;
    Ok(s.into())
}

/// A UDP socket that reports each datagram's destination (`IP_RECVORIGDSTADDR`): with eBPF
/// capture, DNS queries arrive addressed to the resolver the app asked, and are answered from it.
pub fn udp_socket(addr: SocketAddr, mark: u32) -> io::Result<std::net::UdpSocket> {
    let s = new_socket(&addr, Type::DGRAM, Protocol::UDP)?;
    s.set_reuse_address(true)?;
    s.set_mark(mark)?;
    if addr.is_ipv4() {
        nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::Ipv4OrigDstAddr, &true)
            .map_err(io::Error::from)?;
    }
    s.bind(&SockAddr::from(addr))?;
    Ok(s.into())
}

/// A marked TCP socket, bound to `source` with IP_TRANSPARENT when given (so the peer sees the
/// original client address). `port_now`: the source port is chosen at `bind` (someone must know
/// it before the SYN leaves); otherwise `connect` chooses it.
pub fn tcp_socket(
    dest: SocketAddr,
    source: Option<SocketAddr>,
    mark: u32,
    port_now: bool,
) -> io::Result<Socket> {
    let s = new_socket(&dest, Type::STREAM, Protocol::TCP)?;
    s.set_mark(mark)?;
    s.set_tcp_nodelay(true)?;
    if let Some(src) = source {
        set_transparent(&s, src.is_ipv4())?;
        // The same client port may already be in use toward another destination.
        s.set_reuse_address(true)?;
        if !port_now && src.port() == 0 {
            // Binding to port 0 makes the kernel search the client address's ports for one
            // free of every earlier binding, TIME_WAIT included: tens of microseconds at a
            // high connection rate. At connect time only the 4-tuple must be unique.
            nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::IpBindAddressNoPort, &true)
                .map_err(io::Error::from)?;
        }
        s.bind(&SockAddr::from(src))?;
    }
    Ok(s)
}

/// Listeners ztunnel holds inside one pod's network namespace.
pub struct PodListeners {
    pub outbound: TcpListener,
    pub inbound_plain: TcpListener,
    pub hbone: TcpListener,
    /// The DNS proxy's, when it is on.
    pub dns_udp: Option<UdpSocket>,
    pub dns_tcp: Option<TcpListener>,
}

/// Ports of the in-pod listeners and of ztunnel's own endpoints (Istio's).
pub mod ports {
    pub const OUTBOUND: u16 = 15001;
    pub const INBOUND_PLAIN: u16 = 15006;
    pub const HBONE: u16 = 15008;
    pub const DNS: u16 = 15053;
    pub const ADMIN: u16 = 15000;
    pub const STATS: u16 = 15020;
    pub const READINESS: u16 = 15021;

    /// Every port ztunnel serves. Never a target it carries a connection to: a tunnel or a
    /// plaintext connection there would land on ztunnel again (as Istio's ztunnel, it refuses
    /// them whatever the policy says).
    pub const RESERVED: [u16; 7] = [OUTBOUND, INBOUND_PLAIN, HBONE, DNS, ADMIN, STATS, READINESS];

    pub fn is_reserved(port: u16) -> bool {
        RESERVED.contains(&port)
    }
}

/// Refuses a connection from inside a pod's netns that would reach one of ztunnel's own
/// listeners there: a reserved port on an address local to that netns. Every connection
/// ztunnel makes in a pod passes here (in the netns, before the socket exists), so whatever
/// a peer asks for, no connection ztunnel makes comes back to it as new work.
fn refuse_self_connection(dest: SocketAddr) -> io::Result<()> {
    if !ports::is_reserved(dest.port()) {
        return Ok(());
    }
    let ip = dest.ip();
    // A bind succeeds exactly when the address is one of this netns's own (without
    // IP_TRANSPARENT or IP_FREEBIND); port 0 never conflicts.
    let local = ip.is_loopback()
        || ip.is_unspecified()
        || new_socket(&dest, Type::DGRAM, Protocol::UDP)
            .and_then(|s| s.bind(&SockAddr::from(SocketAddr::new(ip, 0))))
            .is_ok();
    if local {
        return Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!(
                "refusing to connect to {dest}: it is ztunnel's own port in this pod, and the \
                 connection would loop back into ztunnel"
            ),
        ));
    }
    Ok(())
}

impl PodListeners {
    /// Opens every listener inside `netns` (the DNS ones only with `dns`). Must run inside a
    /// Tokio runtime.
    pub fn open(netns: &Netns, mark: u32, dns: bool) -> io::Result<PodListeners> {
        let any: std::net::IpAddr = std::net::Ipv4Addr::UNSPECIFIED.into();
        let lo: std::net::IpAddr = std::net::Ipv4Addr::LOCALHOST.into();
        let (outbound, inbound_plain, hbone, dns_sockets) = netns.run(move || {
            let dns_sockets = if dns {
                Some((
                    udp_socket(SocketAddr::new(lo, ports::DNS), mark)?,
                    tcp_listener(SocketAddr::new(lo, ports::DNS), true, mark)?,
                ))
            } else {
                None
            };
            Ok((
                tcp_listener(SocketAddr::new(any, ports::OUTBOUND), true, mark)?,
                tcp_listener(SocketAddr::new(any, ports::INBOUND_PLAIN), true, mark)?,
                tcp_listener(SocketAddr::new(any, ports::HBONE), true, mark)?,
                dns_sockets,
            ))
        })?;
        let (dns_udp, dns_tcp) = match dns_sockets {
            Some((udp, tcp)) => (
                Some(UdpSocket::from_std(udp)?),
                Some(TcpListener::from_std(tcp)?),
            ),
            None => (None, None),
        };
        Ok(PodListeners {
            outbound: TcpListener::from_std(outbound)?,
            inbound_plain: TcpListener::from_std(inbound_plain)?,
            hbone: TcpListener::from_std(hbone)?,
            dns_udp,
            dns_tcp,
        })
    }
}

impl PodListeners {
    /// Duplicates of the listeners' descriptors, for the capture backend.
    pub fn fds(&self) -> io::Result<crate::capture::ListenerFds> {
        use std::os::fd::AsFd;
        Ok(crate::capture::ListenerFds {
            outbound: self.outbound.as_fd().try_clone_to_owned()?,
            inbound_plain: self.inbound_plain.as_fd().try_clone_to_owned()?,
            hbone: self.hbone.as_fd().try_clone_to_owned()?,
            dns_tcp: self
                .dns_tcp
                .as_ref()
                .map(|l| l.as_fd().try_clone_to_owned())
                .transpose()?,
            dns_udp: self
                .dns_udp
                .as_ref()
                .map(|s| s.as_fd().try_clone_to_owned())
                .transpose()?,
        })
    }
}

/// Creates HBONE and plain upstream sockets inside a pod's netns, marked.
#[derive(Clone)]
pub struct InPodSockets {
    pub netns: Netns,
    pub mark: u32,
    /// Set once capture is installed, when the backend needs ztunnel's connections from a
    /// client's address announced (eBPF); shared by every clone.
    pub bypass: Arc<std::sync::OnceLock<Arc<dyn crate::capture::Bypass>>>,
}

impl InPodSockets {
    pub fn new(netns: Netns, mark: u32) -> InPodSockets {
        InPodSockets {
            netns,
            mark,
            bypass: Arc::default(),
        }
    }
}

/// The capture exception of one of ztunnel's connections to an app from a client's address
/// (see [`crate::capture::Bypass`]), lifted when this is dropped. Held for the connection's
/// whole life: until the app's side has its socket, every segment of the connection is looked
/// up like a new flow, and that can be long after ztunnel's side is established (a syncookie
/// answer to a full listen queue keeps no state, and the app's socket is made from whichever
/// later segment finds room).
#[must_use = "the exception ends when this is dropped"]
pub struct CaptureException(Option<(Arc<dyn crate::capture::Bypass>, SocketAddr, u16)>);

impl CaptureException {
    /// No exception (the connection leaves from ztunnel's or the pod's own address).
    pub fn none() -> CaptureException {
        CaptureException(None)
    }
}

impl Drop for CaptureException {
    fn drop(&mut self) {
        if let Some((bypass, bound, port)) = self.0.take() {
            bypass.forget(bound, port);
        }
    }
}

impl InPodSockets {
    /// Connects from inside the pod, optionally from a spoofed `source`. Keep the
    /// [`CaptureException`] as long as the connection.
    pub async fn connect(
        &self,
        dest: SocketAddr,
        source: Option<SocketAddr>,
    ) -> io::Result<(TcpStream, CaptureException)> {
        let mark = self.mark;
        // eBPF capture must be told the source port before the SYN (see `Bypass`).
        let bypass = self.bypass.get().filter(|_| source.is_some());
        let socket = self.netns.run(|| {
            refuse_self_connection(dest)?;
            tcp_socket(dest, source, mark, bypass.is_some())
        })?;
        // Bound already, so the kernel has picked the source port the capture must know.
        let exception = match (source, bypass) {
            (Some(_), Some(bypass)) => {
                let bound = socket
                    .local_addr()?
                    .as_socket()
                    .ok_or_else(|| io::Error::other("bound socket without an IP address"))?;
                bypass.allow(bound, dest.port())?;
                CaptureException(Some((bypass.clone(), bound, dest.port())))
            }
            _ => CaptureException::none(),
        };
        let connected = TcpSocket::from_std_stream(socket.into())
            .connect(dest)
            .await?;
        Ok((connected, exception))
    }
}

impl mesh::hbone::SocketFactory for InPodSockets {
    fn tcp_socket(&self, dest: SocketAddr) -> io::Result<TcpSocket> {
        let mark = self.mark;
        let s = self.netns.run(|| {
            refuse_self_connection(dest)?;
            tcp_socket(dest, None, mark, false)
        })?;
        Ok(TcpSocket::from_std_stream(s.into()))
    }
}

/// Convenience for places that want `Arc<dyn SocketFactory>`.
pub fn factory(netns: Netns, mark: u32) -> Arc<dyn mesh::hbone::SocketFactory> {
    Arc::new(InPodSockets::new(netns, mark))
}
