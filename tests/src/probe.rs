//! Tools for the attack scenarios: an HBONE client that presents any identity the lab's CA
//! signs and sends any headers, from any pod's netns (as a compromised workload would), and
//! readings of a ztunnel process (descriptors, CPU time, resident memory) from `/proc`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use lab::Lab;
use mesh::certs::{CertStore, LocalCa};
use mesh::hbone::{H2Settings, H2Stream, HboneError, Pool, SocketFactory, TunnelRequest};
use mesh::tls::TlsContext;
use mesh::Identity;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

pub const TRUST_DOMAIN: &str = "cluster.local";

/// Sockets made in a named netns (a pod's), unmarked: as a process in that pod would make them.
struct InNetns(String);

impl SocketFactory for InNetns {
    fn tcp_socket(&self, dest: SocketAddr) -> std::io::Result<TcpSocket> {
        let socket = lab::netns::run_in(&self.0, || {
            let s = socket2::Socket::new(
                socket2::Domain::for_address(dest),
                socket2::Type::STREAM.nonblocking(),
                Some(socket2::Protocol::TCP),
            )?;
            Ok::<_, std::io::Error>(std::net::TcpStream::from(s))
        })
        .map_err(std::io::Error::other)??;
        Ok(TcpSocket::from_std_stream(socket))
    }
}

/// An HBONE client with a certificate of the lab's CA for `identity`, dialling from `netns`.
pub struct HboneProbe {
    runtime: tokio::runtime::Runtime,
    pool: Pool,
    identity: Identity,
}

/// What a CONNECT got.
#[derive(Debug)]
pub enum ConnectOutcome {
    /// 200: the tunnel is open; what a byte sent into it brought back (the echo app answers
    /// lines), or the error reading it.
    Open(Result<Vec<u8>, String>),
    /// Refused with this status and reason.
    Refused(http::StatusCode, Option<String>),
    /// Any other failure (handshake, connection).
    Failed(String),
}

impl HboneProbe {
    pub fn new(lab: &Lab, netns: &str, namespace: &str, service_account: &str) -> HboneProbe {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let ca = LocalCa::load_or_create(&lab::mesh::ca_dir(lab.state()), TRUST_DOMAIN)
            .expect("the lab's CA");
        let identity = Identity::new(TRUST_DOMAIN, namespace, service_account).expect("identity");
        let tls =
            TlsContext::new(TRUST_DOMAIN, CertStore::new(), ca.trust_roots()).expect("TLS context");
        tls.store().insert(
            ca.issue(&identity, Duration::from_secs(3600))
                .expect("certificate"),
        );
        let pool = {
            let _enter = runtime.enter();
            Pool::new(
                Arc::new(tls),
                Arc::new(InNetns(netns.to_string())),
                H2Settings::default(),
            )
        };
        HboneProbe {
            runtime,
            pool,
            identity,
        }
    }

    /// Opens a tunnel to `hbone` (a pod's `ip:15008`) for `authority`, expecting the server to
    /// prove `destination`, with extra request headers; if it opens, sends `probe` and reads
    /// what comes back within 2 s.
    pub fn connect(
        &self,
        hbone: SocketAddr,
        destination: &Identity,
        authority: &str,
        headers: http::HeaderMap,
        probe: &[u8],
    ) -> ConnectOutcome {
        let req = TunnelRequest {
            source: self.identity.clone(),
            destination: destination.clone(),
            address: hbone,
            authority: authority.to_string(),
            headers,
        };
        self.runtime.block_on(async {
            let connect = tokio::time::timeout(Duration::from_secs(10), self.pool.connect(req));
            match connect.await {
                Err(_) => ConnectOutcome::Failed("no answer to the CONNECT within 10 s".into()),
                Ok(Err(HboneError::Refused { status, reason, .. })) => {
                    ConnectOutcome::Refused(status, reason)
                }
                Ok(Err(e)) => ConnectOutcome::Failed(e.to_string()),
                Ok(Ok(stream)) => ConnectOutcome::Open(exchange(stream, probe).await),
            }
        })
    }
}

async fn exchange(mut stream: H2Stream, probe: &[u8]) -> Result<Vec<u8>, String> {
    stream.write_all(probe).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await {
        Err(_) => Err("nothing came back within 2 s".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(n)) => Ok(buf[..n].to_vec()),
    }
}

/// Readings of one process from `/proc`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcStats {
    /// Open file descriptors.
    pub fds: usize,
    /// User + system CPU time, in clock ticks.
    pub cpu_ticks: u64,
    /// Resident set, KiB.
    pub rss_kib: u64,
}

impl ProcStats {
    pub fn read(pid: i32) -> ProcStats {
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or_else(|e| panic!("reading /proc/{pid}/fd: {e}"));
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
        // Fields after the command name (which may hold spaces) start after the last ')'.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .expect("stat format")
            .1
            .split_whitespace()
            .collect();
        // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after ')'.
        let cpu_ticks = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("VmRSS");
        ProcStats {
            fds,
            cpu_ticks,
            rss_kib,
        }
    }
}

/// CPU seconds `pid` spends over `window` (ticks are 1/100 s on Linux).
pub fn cpu_seconds_over(pid: i32, window: Duration) -> f64 {
    let before = ProcStats::read(pid).cpu_ticks;
    std::thread::sleep(window);
    let after = ProcStats::read(pid).cpu_ticks;
    (after - before) as f64 / 100.0
}

/// Raises this process's own descriptor limit as far as it may (soft to hard) and returns
/// it: a flood test holds thousands of sockets. Processes started before keep the limit they
/// inherited.
pub fn raise_own_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read or fill the struct we pass and touch nothing else.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit),
            0,
            "setrlimit(NOFILE): {}",
            std::io::Error::last_os_error()
        );
    }
    limit.rlim_cur
}

/// How many connections wait in the accept queue of the listener on `addr` in `netns`
/// (`/proc/net/tcp`'s rx_queue of a listening socket); `None` when nothing listens there.
/// Zero means the owner has taken (or closed) every connection handed to it so far.
pub fn accept_queue(netns: &str, addr: std::net::SocketAddrV4) -> Option<u32> {
    // The table is little-endian hex on this machine: "0100007F:3AED" is 127.0.0.1:15085.
    let local = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(addr.ip().octets()),
        addr.port()
    );
    let table = lab::netns::run_in(netns, || {
        // thread-self: the table of the netns this thread entered, not the process's.
        std::fs::read_to_string("/proc/thread-self/net/tcp")
    })
    .expect("enter the netns")
    .expect("read /proc/thread-self/net/tcp");
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // local_address, state 0A (LISTEN), tx_queue:rx_queue.
        if fields.get(1) != Some(&local.as_str()) || fields.get(3) != Some(&"0A") {
            return None;
        }
        u32::from_str_radix(fields.get(4)?.split_once(':')?.1, 16).ok()
    })
}
