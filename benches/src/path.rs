//! What a measurement needs to know about a path, whatever layout it is in: the netns the
//! client runs in, the server's address, and the netns its load servers listen in. Sockets
//! are created on a thread that entered the client's netns, so they live there for good.

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context};
use std::io::{Read, Write};

/// How long a bench socket may block before the measurement is abandoned.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A client → server pair measured by the benchmark.
#[derive(Clone, Debug)]
pub struct BenchPath {
    /// What the report calls it (`direct`, `mesh`, `hbone`, ...).
    pub name: &'static str,
    /// Named netns of the client (where every client socket is created).
    pub client_netns: String,
    /// Named netns the load servers of this path listen in.
    pub server_netns: String,
    pub server_ip: IpAddr,
}

impl BenchPath {
    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.server_ip, port)
    }

    /// Runs `f` on a thread inside the client's netns (threads it spawns inherit the netns).
    pub fn in_client<T: Send>(&self, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        lab::netns::run_in(&self.client_netns, f)
            .with_context(|| format!("{} path: entering the client netns", self.name))
    }

    /// Sends a few bytes to the echo server on `port` and checks they come back.
    pub fn check_echo(&self, port: u16) -> anyhow::Result<()> {
        let addr = self.addr(port);
        let back = self
            .in_client(|| -> std::io::Result<Vec<u8>> {
                let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
                s.set_read_timeout(Some(IO_TIMEOUT))?;
                s.write_all(b"ping")?;
                let mut back = [0u8; 4];
                s.read_exact(&mut back)?;
                Ok(back.to_vec())
            })?
            .with_context(|| format!("{} path: echo to {addr}", self.name))?;
        if back != b"ping" {
            bail!("{} path: echo returned {back:?}", self.name);
        }
        Ok(())
    }
}
