//! The kubelet's HTTP readiness probe: a GET from the pod's node to the pod's address, ready on
//! 200. Also the plain HTTP/1.0 GET the lab uses to read admin and metrics endpoints.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::netns::{self, NetnsError};

/// A readiness probe that did not pass.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{what} is not ready after {timeout:?}: GET {path} on {addr} last answered {last} (see its log in the lab's logs/)")]
    NotReady {
        what: String,
        path: String,
        addr: SocketAddr,
        timeout: Duration,
        last: String,
    },
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

/// `httpGet` readiness, as a pod spec declares it, asked from the pod's node.
#[derive(Debug, Clone)]
pub struct HttpProbe {
    /// What is probed, for errors (`waypoint bookinfo/waypoint`).
    pub what: String,
    /// The node's netns, where the kubelet runs.
    pub netns: String,
    pub addr: SocketAddr,
    pub path: String,
    /// How long the container may take to become ready.
    pub timeout: Duration,
}

impl HttpProbe {
    /// Probes every 50 ms until the answer is 200.
    pub fn wait(&self) -> Result<(), ProbeError> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let (addr, path) = (self.addr, self.path.clone());
            let status = netns::run_in(&self.netns, move || http_status(addr, &path))?;
            if status == Some(200) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ProbeError::NotReady {
                    what: self.what.clone(),
                    path: self.path.clone(),
                    addr: self.addr,
                    timeout: self.timeout,
                    last: status.map_or("nothing".into(), |s| format!("status {s}")),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// GET `path` over HTTP/1.0; the status code, or None when nothing answers.
pub fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    http_get(addr, path).map(|(status, _)| status)
}

/// GET `path` over HTTP/1.0 from the calling thread's netns: status and body.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}
