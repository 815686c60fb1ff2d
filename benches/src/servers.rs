//! Load servers run by the bench process inside a server's netns (the listening socket is
//! created there, so every accepted connection lives there too), with plain blocking threads:
//!
//! - sink ([`SINK_PORT`]): reads until EOF, then answers the byte count (u64, little endian);
//! - echo ([`ECHO_PORT`]): echoes until EOF (request/response, held connections);
//! - connect ([`CONNECT_PORT`]): answers one byte with itself, then waits for the client's close.
//!   Served by a fixed set of threads each accepting in turn, so no thread is started per
//!   connection while connection setup is being timed.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;

pub const SINK_PORT: u16 = 5001;
pub const ECHO_PORT: u16 = 5002;
pub const CONNECT_PORT: u16 = 5003;

/// Threads accepting on the connect port: more than the parallel clients, so none waits.
const CONNECT_WORKERS: usize = 16;
/// A server connection idle for this long is dropped (bounds every server thread).
const IDLE: Duration = Duration::from_secs(30);
const READ_BUFFER: usize = 256 * 1024;
/// Stack of per-connection threads: a 1,000 held connections must not cost 2 MiB each.
const STACK: usize = 256 * 1024;

/// The servers of one pod. Dropping them stops accepting; open connections end at the
/// client's close or after [`IDLE`].
pub struct Servers {
    listeners: Vec<TcpListener>,
    acceptors: Vec<JoinHandle<()>>,
}

impl Servers {
    /// Binds the three ports in the named netns and starts serving.
    pub fn start(netns: &str) -> anyhow::Result<Servers> {
        let bind = |port: u16| -> anyhow::Result<TcpListener> {
            lab::netns::run_in(netns, || TcpListener::bind(("0.0.0.0", port)))?
                .with_context(|| format!("binding port {port} in netns {netns}"))
        };
        let sink = bind(SINK_PORT)?;
        let echo = bind(ECHO_PORT)?;
        let connect = bind(CONNECT_PORT)?;
        let mut servers = Servers {
            listeners: Vec::new(),
            acceptors: Vec::new(),
        };
        servers.per_connection(sink, serve_sink)?;
        servers.per_connection(echo, serve_echo)?;
        for _ in 0..CONNECT_WORKERS {
            let l = connect.try_clone()?;
            servers.acceptors.push(std::thread::spawn(move || {
                while let Ok((s, _)) = l.accept() {
                    let _ = serve_connect(s);
                }
            }));
        }
        servers.listeners.push(connect);
        Ok(servers)
    }

    /// One acceptor thread that starts a thread per accepted connection.
    fn per_connection(
        &mut self,
        listener: TcpListener,
        serve: fn(TcpStream) -> std::io::Result<()>,
    ) -> anyhow::Result<()> {
        let l = listener.try_clone()?;
        self.acceptors.push(std::thread::spawn(move || {
            while let Ok((s, _)) = l.accept() {
                // Out of threads: the connection is dropped and the client sees the failure.
                let _ = std::thread::Builder::new()
                    .stack_size(STACK)
                    .spawn(move || serve(s));
            }
        }));
        self.listeners.push(listener);
        Ok(())
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        for l in &self.listeners {
            // SAFETY: shutdown on a listening socket we own; on Linux it makes every thread
            // blocked in accept() on it return EINVAL, which ends the accept loops.
            unsafe { libc::shutdown(l.as_raw_fd(), libc::SHUT_RDWR) };
        }
        for a in self.acceptors.drain(..) {
            let _ = a.join();
        }
    }
}

fn prepare(s: &TcpStream) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(IDLE))?;
    s.set_write_timeout(Some(IDLE))
}

fn serve_sink(mut s: TcpStream) -> std::io::Result<()> {
    prepare(&s)?;
    let mut buf = vec![0u8; READ_BUFFER];
    let mut total: u64 = 0;
    loop {
        match s.read(&mut buf)? {
            0 => break,
            n => total += n as u64,
        }
    }
    s.write_all(&total.to_le_bytes())
}

fn serve_echo(mut s: TcpStream) -> std::io::Result<()> {
    prepare(&s)?;
    // Small on purpose: held connections keep their buffer for as long as they are open.
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match s.read(&mut buf)? {
            0 => return Ok(()),
            n => s.write_all(&buf[..n])?,
        }
    }
}

fn serve_connect(mut s: TcpStream) -> std::io::Result<()> {
    prepare(&s)?;
    let mut byte = [0u8; 1];
    s.read_exact(&mut byte)?;
    s.write_all(&byte)?;
    // Wait for the client's close, so the client is the one that closes first.
    while s.read(&mut byte)? != 0 {}
    Ok(())
}
