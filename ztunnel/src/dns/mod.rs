//! DNS proxy (15053 in the pod, UDP and TCP): answers A/AAAA for mesh service hostnames from the
//! current config ([`resolve`]), so pods resolve service names even without cluster DNS;
//! forwards every other query to the node's nameservers, each in turn. Connections and
//! forwarded queries are bounded per pod (and forwards per node), and a TCP client that goes
//! quiet is dropped.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use hickory_proto::op::{Message, ResponseCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::proxy::{Pod, Shared};

mod resolve;

pub use resolve::{candidates, resolve, Resolution, Zone};

const UPSTREAM_TIMEOUT: Duration = Duration::from_millis(1500);
/// Nameservers tried per query, in resolv.conf order (as glibc's resolver, at most three).
const MAX_NAMESERVERS: usize = 3;

/// The nameservers queries go to when ztunnel does not answer them: those of a resolv.conf
/// (the node's, or `AMESH_RESOLV_CONF`), re-read when it changes (looked at every few seconds,
/// not on every query).
#[derive(Debug)]
pub struct Resolvers {
    path: PathBuf,
    /// The nameservers as last read (`None` before the first read). Every forwarded query of
    /// the node reads it, so it is a snapshot read without a lock.
    current: ArcSwapOption<Vec<SocketAddr>>,
    /// The last look at the file. Only a query that finds a look due and the lock free takes
    /// it; the others go on with `current` meanwhile (the first read excepted: before it
    /// there is nothing to go on with).
    check: parking_lot::Mutex<ResolverCheck>,
}

#[derive(Debug)]
struct ResolverCheck {
    checked: Option<Instant>,
    modified: Option<std::time::SystemTime>,
}

/// How often the resolv.conf is looked at again.
const RESOLV_CONF_RECHECK: Duration = Duration::from_secs(5);

impl Resolvers {
    pub fn new(path: impl Into<PathBuf>) -> Resolvers {
        Resolvers {
            path: path.into(),
            current: ArcSwapOption::empty(),
            check: parking_lot::Mutex::new(ResolverCheck {
                checked: None,
                modified: None,
            }),
        }
    }

    /// The nameservers, in order (at most [`MAX_NAMESERVERS`]).
    fn all(&self) -> Vec<SocketAddr> {
        let check = match self.current.load().is_none() {
            true => Some(self.check.lock()),
            false => self.check.try_lock(),
        };
        if let Some(mut check) = check {
            if check
                .checked
                .is_none_or(|t| t.elapsed() >= RESOLV_CONF_RECHECK)
            {
                check.checked = Some(Instant::now());
                let modified = std::fs::metadata(&self.path)
                    .and_then(|m| m.modified())
                    .ok();
                if modified != check.modified || modified.is_none() {
                    check.modified = modified;
                    let read = std::fs::read_to_string(&self.path)
                        .map(|text| nameservers(&text))
                        .unwrap_or_default();
                    self.current.store(Some(Arc::new(read)));
                }
            }
        }
        self.current
            .load()
            .iter()
            .flat_map(|list| list.iter().take(MAX_NAMESERVERS).copied())
            .collect()
    }
}

/// The `nameserver` lines of a resolv.conf.
fn nameservers(conf: &str) -> Vec<SocketAddr> {
    conf.lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            (parts.next() == Some("nameserver"))
                .then(|| parts.next()?.parse::<IpAddr>().ok())
                .flatten()
                .map(|ip| SocketAddr::new(ip, 53))
        })
        .collect()
}

/// Sends `query` to `server` and waits for its answer. The socket is connected, so only the
/// server's datagrams are taken for answers and an unreachable server fails at once.
async fn forward(query: &Message, raw: &[u8], server: SocketAddr) -> Option<Vec<u8>> {
    let bind: SocketAddr = if server.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(bind).await.ok()?;
    socket.connect(server).await.ok()?;
    socket.send(raw).await.ok()?;
    let mut buf = vec![0u8; 4096];
    let wait = async {
        loop {
            let n = socket.recv(&mut buf).await.ok()?;
            // Another query's late answer, or garbage: keep waiting for ours.
            if n >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == query.metadata.id {
                return Some(n);
            }
        }
    };
    let n = tokio::time::timeout(UPSTREAM_TIMEOUT, wait).await.ok()??;
    buf.truncate(n);
    Some(buf)
}

/// Asks each nameserver in turn until one answers with something other than SERVFAIL or
/// REFUSED (those, and silence, send the query to the next one, as glibc does); the last
/// answer if none did better.
async fn forward_to_all(query: &Message, raw: &[u8], servers: &[SocketAddr]) -> Option<Vec<u8>> {
    let mut last = None;
    for server in servers {
        let Some(answer) = forward(query, raw, *server).await else {
            continue;
        };
        let rcode = answer.get(3).map(|b| b & 0x0f);
        // 2: SERVFAIL, 5: REFUSED.
        if matches!(rcode, Some(2 | 5)) {
            last = Some(answer);
            continue;
        }
        return Some(answer);
    }
    last
}

/// Answers one raw query; `None` when there is nothing to answer (not DNS, or not a query).
/// `protocol` is the transport it came on (`udp`, `tcp`), for the metrics.
async fn handle(shared: &Shared, pod: &Pod, raw: &[u8], protocol: &'static str) -> Option<Vec<u8>> {
    let query = Message::from_vec(raw).ok()?;
    let zone = Zone {
        namespace: &pod.info.namespace,
        domain: &shared.cluster_domain,
    };
    let snapshot = shared.state.snapshot();
    // Counted as Istio's ztunnel does: one request per query received, by its first question's
    // type, with the asking pod's canonical service.
    let labels = crate::metrics::DnsLabels::new(
        &query
            .queries
            .first()
            .map(|q| q.query_type().to_string())
            .unwrap_or_default(),
        protocol,
        snapshot.workload_by_ip(pod.info.ip).map(|w| &**w),
    );
    shared.metrics.dns.received(&labels);
    let resolution = resolve(&snapshot, zone, &query);
    let servfail = || {
        Message::error_msg(
            query.metadata.id,
            query.metadata.op_code,
            ResponseCode::ServFail,
        )
    };
    let reply = match resolution {
        Resolution::Drop => return None,
        Resolution::Answer(m) => m,
        Resolution::Forward => {
            // A forward holds a socket until the upstream answers or gives up: bounded per pod
            // and per node, and past the bound the app hears SERVFAIL at once.
            let permits = (
                pod.dns.forwards.clone().try_acquire_owned(),
                shared.limits.dns_forwards.try_take(),
            );
            let (Ok(_pod_permit), Some(_node_permit)) = permits else {
                debug!("too many DNS queries in flight upstream; answering SERVFAIL");
                return servfail().to_vec().ok();
            };
            let started = tokio::time::Instant::now();
            let answer = forward_to_all(&query, raw, &shared.resolvers.all()).await;
            shared
                .metrics
                .dns
                .forwarded(&labels, started.elapsed(), answer.is_some());
            match answer {
                Some(bytes) => return Some(bytes),
                None => servfail(),
            }
        }
    };
    reply.to_vec().ok()
}

pub async fn serve(
    shared: Arc<Shared>,
    pod: Arc<Pod>,
    udp: UdpSocket,
    tcp: TcpListener,
    drain: mesh::hbone::DrainWatch,
) {
    let udp = Arc::new(udp);
    let udp_loop = {
        let (shared, pod, udp) = (shared.clone(), pod.clone(), udp.clone());
        let mut drain = drain.clone();
        async move {
            let mut buf = vec![0u8; 4096];
            let local = udp.local_addr().ok();
            // The queries being answered (at most the pod's `udp_queries` permits), so drain
            // waits for their answers and stopping the pod aborts them.
            let mut queries = tokio::task::JoinSet::new();
            loop {
                let received = tokio::select! {
                    received = recv_with_dst(&udp, &mut buf) => received,
                    Some(_) = queries.join_next(), if !queries.is_empty() => continue,
                    () = drain.signaled() => break,
                };
                let (n, from, dst) = match received {
                    Ok(received) => received,
                    Err(e) => {
                        // Never spin on a socket that keeps failing.
                        debug!(error = %e, "receiving a DNS datagram failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let raw = buf[..n].to_vec();
                // At most so many datagrams in hand at once: past that the loop stops reading
                // and the kernel drops what its buffer cannot hold (UDP resolvers retry).
                let Ok(in_flight) = pod.dns.udp_queries.clone().acquire_owned().await else {
                    break;
                };
                let (shared, pod, udp) = (shared.clone(), pod.clone(), udp.clone());
                queries.spawn(async move {
                    let _in_flight = in_flight;
                    let Some(reply) = handle(&shared, &pod, &raw, "udp").await else {
                        return;
                    };
                    match dst.filter(|d| Some(*d) != local) {
                        // Steered to us unchanged (eBPF capture): answer from the address the
                        // app asked, or its resolver drops the answer.
                        Some(dst) => {
                            if let Err(e) = reply_from(&pod, dst, from, &reply).await {
                                reply_failed(dst, from, &e);
                            }
                        }
                        // Addressed to us (nft REDIRECT: conntrack rewrites the reply).
                        None => {
                            let _ = udp.send_to(&reply, from).await;
                        }
                    }
                });
            }
            // Drained: no new query is read; those in hand get their answers (each bounded
            // by the upstream timeout).
            while queries.join_next().await.is_some() {}
        }
    };
    // Connections are refused near the descriptor limit before they take one of the pod's
    // permits; past the pod's bound a new connection is closed at once.
    let tcp_loop = mesh::accept::AcceptLoop::new("DNS connections")
        .until(drain.clone())
        .descriptor_headroom()
        .run(tcp, move |stream, _peer| {
            let Ok(permit) = pod.dns.tcp.clone().try_acquire_owned() else {
                debug!("too many DNS connections open in this pod; closing a new one");
                return None;
            };
            let (shared, pod, drain) = (shared.clone(), pod.clone(), drain.clone());
            Some(async move {
                serve_tcp_conn(&shared, &pod, stream, drain).await;
                drop(permit);
            })
        });
    // Both loops stop reading at drain and return once what they hold is answered; the pod's
    // drain deadline bounds the wait (its tasks are aborted past it).
    tokio::join!(udp_loop, tcp_loop);
}

/// Receives one datagram, with the address it was sent to (`IP_RECVORIGDSTADDR`, set on the
/// in-pod DNS socket).
async fn recv_with_dst(
    udp: &UdpSocket,
    buf: &mut [u8],
) -> std::io::Result<(usize, SocketAddr, Option<SocketAddr>)> {
    use std::os::fd::AsRawFd;
    loop {
        udp.readable().await?;
        match udp.try_io(tokio::io::Interest::READABLE, || {
            recvmsg_with_dst(udp.as_raw_fd(), buf)
        }) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}

fn recvmsg_with_dst(
    fd: std::os::fd::RawFd,
    buf: &mut [u8],
) -> std::io::Result<(usize, SocketAddr, Option<SocketAddr>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, SockaddrIn};
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!(nix::libc::sockaddr_in);
    let msg = recvmsg::<SockaddrIn>(fd, &mut iov, Some(&mut space), MsgFlags::empty())?;
    let from = msg
        .address
        .map(|a| SocketAddr::V4(std::net::SocketAddrV4::from(a)))
        .ok_or_else(|| std::io::Error::other("datagram without a source address"))?;
    let mut dst = None;
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::Ipv4OrigDstAddr(sa) = cmsg {
            dst = Some(SocketAddr::V4(std::net::SocketAddrV4::new(
                u32::from_be(sa.sin_addr.s_addr).into(),
                u16::from_be(sa.sin_port),
            )));
        }
    }
    Ok((msg.bytes, from, dst))
}

/// Logs a failed DNS reply. A refused bind (no `CAP_NET_BIND_SERVICE`, so port 53 is out of
/// reach) fails every lookup of every pod, so it is a warning, once per process; anything
/// else is one client's trouble and stays at debug.
fn reply_failed(dst: SocketAddr, from: SocketAddr, e: &std::io::Error) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if e.kind() == std::io::ErrorKind::PermissionDenied
        && !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed)
    {
        warn!(%dst, %from, error = %e, "cannot answer DNS from the address the pod asked \
            (binding a port below 1024 needs CAP_NET_BIND_SERVICE); pods' lookups will time out");
    } else {
        debug!(%dst, %from, error = %e, "sending a DNS reply failed");
    }
}

/// Sends `reply` to `client` from `dst` (not a local address): a transparent socket in the
/// pod's netns, bound to `dst` and connected to the client, so it never receives anything else.
async fn reply_from(
    pod: &Pod,
    dst: SocketAddr,
    client: SocketAddr,
    reply: &[u8],
) -> std::io::Result<()> {
    let mark = pod.sockets.mark;
    let socket = pod.netns.run(|| {
        let s = socket2::Socket::new(
            socket2::Domain::for_address(dst),
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )?;
        s.set_cloexec(true)?;
        s.set_nonblocking(true)?;
        s.set_mark(mark)?;
        s.set_ip_transparent_v4(true)?;
        // Concurrent answers from the same address each get a socket.
        s.set_reuse_address(true)?;
        s.bind(&dst.into())?;
        s.connect(&client.into())?;
        Ok(std::net::UdpSocket::from(s))
    })?;
    UdpSocket::from_std(socket)?.send(reply).await.map(|_| ())
}

/// How long a DNS-over-TCP connection may sit between queries.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// How long the body of a query may take once its length has arrived.
const TCP_READ: Duration = Duration::from_secs(5);

/// DNS over TCP: each message has a two-byte length prefix; several may follow on one stream.
/// The body is read as it arrives (a length prefix alone allocates nothing), within
/// [`TCP_READ`].
/// Answers the queries of one DNS-over-TCP connection until the client stops, goes quiet, or
/// drain starts (the query being answered then still gets its answer).
async fn serve_tcp_conn(
    shared: &Shared,
    pod: &Pod,
    mut stream: TcpStream,
    mut drain: mesh::hbone::DrainWatch,
) {
    loop {
        let next = tokio::select! {
            next = tokio::time::timeout(TCP_IDLE, stream.read_u16()) => next,
            () = drain.signaled() => return,
        };
        let len = match next {
            Ok(Ok(l)) => l as usize,
            _ => return,
        };
        let mut raw = Vec::new();
        let mut body = (&mut stream).take(len as u64);
        match tokio::time::timeout(TCP_READ, body.read_to_end(&mut raw)).await {
            Ok(Ok(n)) if n == len => {}
            _ => return,
        }
        let Some(reply) = handle(shared, pod, &raw, "tcp").await else {
            debug!("dropping a malformed DNS message over TCP");
            return;
        };
        let Ok(reply_len) = u16::try_from(reply.len()) else {
            return;
        };
        if stream.write_u16(reply_len).await.is_err() || stream.write_all(&reply).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests;
