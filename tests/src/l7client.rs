//! An L7 client for the protocol scenarios, built on hyper as an app would be: HTTP/1.1 with
//! several requests on one kept-alive connection, HTTP/2 with prior knowledge (h2c), gRPC calls
//! (frames and trailers parsed), a WebSocket session, and gigabyte downloads and uploads checked
//! byte for byte against the echo app's pattern while they stream, never held in memory.
//!
//! Every exchange is an `async fn` on an address, so it runs against an echo app on loopback as
//! well as from a pod: [`in_pod`] runs one inside a pod's netns on a runtime of its own.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use lab::echo::pattern::first_mismatch;
use lab::echo::websocket::{self, WsFrame, OP_CLOSE};
use lab::echo::{grpc, DigestReply, EchoBody, EchoReply};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Which HTTP a connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Http {
    H1,
    /// HTTP/2 with prior knowledge, in clear text.
    H2c,
}

/// A whole (small) response.
#[derive(Debug)]
pub struct L7Response {
    pub status: StatusCode,
    pub version: http::Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl L7Response {
    /// The echo app's JSON answer.
    pub fn echo(&self) -> Result<EchoReply, String> {
        serde_json::from_slice(&self.body).map_err(|e| {
            format!(
                "not an echo answer ({e}), status {}: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// What a gRPC call got back.
#[derive(Debug)]
pub struct GrpcReply {
    pub status: StatusCode,
    pub messages: Vec<Bytes>,
    /// From the trailers (or the headers of a trailers-only answer).
    pub grpc_status: Option<String>,
    pub grpc_message: Option<String>,
}

/// A finished transfer.
#[derive(Debug, Clone, Copy)]
pub struct Transfer {
    pub bytes: u64,
    pub elapsed: Duration,
}

impl Transfer {
    pub fn mib_per_s(&self) -> f64 {
        self.bytes as f64 / (1024.0 * 1024.0) / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Runs the client `f` makes inside `pod`'s netns, on a current-thread runtime of that thread,
/// giving up after `limit`.
pub fn in_pod<T, F, Fut>(lab: &lab::Lab, pod: &str, limit: Duration, f: F) -> Result<T, String>
where
    T: Send,
    F: FnOnce() -> Fut + Send,
    Fut: Future<Output = Result<T, String>>,
{
    let netns = lab.pod(pod).map_err(|e| e.to_string())?.netns.clone();
    lab::netns::run_in(&netns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("runtime: {e}"))?;
        rt.block_on(async {
            tokio::time::timeout(limit, f())
                .await
                .map_err(|_| format!("no answer within {limit:?}"))?
        })
    })
    .map_err(|e| e.to_string())?
}

/// One client connection of either HTTP.
enum Sender {
    H1(http1::SendRequest<EchoBody>),
    H2(http2::SendRequest<EchoBody>),
}

async fn tcp(addr: SocketAddr) -> Result<TokioIo<TcpStream>, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    Ok(TokioIo::new(stream))
}

impl Sender {
    async fn connect(addr: SocketAddr, http: Http) -> Result<Sender, String> {
        let io = tcp(addr).await?;
        match http {
            Http::H1 => {
                let (sender, conn) = http1::handshake(io)
                    .await
                    .map_err(|e| format!("HTTP/1.1 handshake with {addr}: {e}"))?;
                tokio::spawn(conn);
                Ok(Sender::H1(sender))
            }
            Http::H2c => {
                let (sender, conn) = http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(|e| format!("HTTP/2 handshake with {addr}: {e}"))?;
                tokio::spawn(conn);
                Ok(Sender::H2(sender))
            }
        }
    }

    /// A request for `path`; HTTP/1.1 names the authority in `Host`, HTTP/2 in the URI.
    fn request(&self, method: &str, authority: &str, path: &str) -> http::request::Builder {
        match self {
            Sender::H1(_) => Request::builder()
                .method(method)
                .uri(path)
                .header(http::header::HOST, authority),
            Sender::H2(_) => Request::builder()
                .method(method)
                .version(http::Version::HTTP_2)
                .uri(format!("http://{authority}{path}")),
        }
    }

    async fn send(&mut self, req: Request<EchoBody>) -> Result<http::Response<Incoming>, String> {
        let what = format!("{} {}", req.method(), req.uri());
        let sent = match self {
            Sender::H1(s) => {
                s.ready()
                    .await
                    .map_err(|e| format!("{what}: connection not reusable: {e}"))?;
                s.send_request(req).await
            }
            Sender::H2(s) => {
                s.ready()
                    .await
                    .map_err(|e| format!("{what}: connection not usable: {e}"))?;
                s.send_request(req).await
            }
        };
        sent.map_err(|e| format!("{what}: {e}"))
    }
}

/// Reads a small response whole.
async fn read_all(resp: http::Response<Incoming>) -> Result<L7Response, String> {
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| format!("response body: {e}"))?
        .to_bytes();
    Ok(L7Response {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body,
    })
}

/// GETs every path in turn on ONE connection (HTTP/1.1 keep-alive, or one HTTP/2 connection):
/// a proxy that closed the connection after a response fails the next request.
pub async fn get_many(
    addr: SocketAddr,
    http: Http,
    authority: &str,
    paths: &[&str],
) -> Result<Vec<L7Response>, String> {
    let mut sender = Sender::connect(addr, http).await?;
    let mut out = Vec::new();
    for path in paths {
        let req = sender
            .request("GET", authority, path)
            .body(EchoBody::empty())
            .map_err(|e| e.to_string())?;
        let resp = sender.send(req).await?;
        out.push(read_all(resp).await?);
    }
    Ok(out)
}

/// Sends `calls` (method path, request message) as gRPC calls on one h2c connection, all at
/// once, and returns their replies in order.
pub async fn grpc_calls(
    addr: SocketAddr,
    authority: &str,
    calls: &[(&str, Bytes)],
) -> Result<Vec<GrpcReply>, String> {
    let sender = Sender::connect(addr, Http::H2c).await?;
    let mut tasks = Vec::new();
    for (method, message) in calls {
        let req = sender
            .request("POST", authority, method)
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header("te", "trailers")
            .body(EchoBody::full(grpc::encode(message)))
            .map_err(|e| e.to_string())?;
        let Sender::H2(s) = &sender else {
            return Err("gRPC needs HTTP/2".into());
        };
        let mut own = Sender::H2(s.clone());
        // Concurrent streams on the one connection, as a gRPC channel multiplexes them.
        tasks.push(tokio::spawn(async move {
            grpc_reply(own.send(req).await?).await
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.map_err(|e| format!("gRPC call task: {e}"))??);
    }
    Ok(out)
}

async fn grpc_reply(resp: http::Response<Incoming>) -> Result<GrpcReply, String> {
    let (parts, body) = resp.into_parts();
    let collected = body
        .collect()
        .await
        .map_err(|e| format!("gRPC response body: {e}"))?;
    // A trailers-only answer carries the status in its headers.
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let field = |name: &str| {
        (trailers.get(name).or_else(|| parts.headers.get(name)))
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (grpc_status, grpc_message) = (field("grpc-status"), field("grpc-message"));
    let messages = grpc::decode(&collected.to_bytes(), grpc::MAX_MESSAGE)
        .map_err(|e| format!("gRPC response framing: {e}"))?;
    Ok(GrpcReply {
        status: parts.status,
        messages,
        grpc_status,
        grpc_message,
    })
}

/// What a WebSocket session saw.
#[derive(Debug)]
pub struct WsSession {
    /// The 101's headers.
    pub headers: HeaderMap,
    /// One reply per frame sent, in order.
    pub replies: Vec<WsFrame>,
    /// The server's answer to our close frame.
    pub close: WsFrame,
}

/// Upgrades `GET /ws` to a WebSocket, sends each frame (masked, as a client must) and reads
/// the server's reply to it, then closes the session with code 1000.
pub async fn websocket_session(
    addr: SocketAddr,
    authority: &str,
    frames: &[WsFrame],
) -> Result<WsSession, String> {
    let (mut sender, conn) = http1::handshake::<_, EchoBody>(tcp(addr).await?)
        .await
        .map_err(|e| format!("HTTP/1.1 handshake with {addr}: {e}"))?;
    tokio::spawn(conn.with_upgrades());
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    let req = Request::builder()
        .uri(websocket::PATH)
        .header(http::header::HOST, authority)
        .header(http::header::UPGRADE, "websocket")
        .header(http::header::CONNECTION, "Upgrade")
        .header("sec-websocket-key", key)
        .header("sec-websocket-version", "13")
        .body(EchoBody::empty())
        .map_err(|e| e.to_string())?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("GET /ws: {e}"))?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let r = read_all(resp).await?;
        return Err(format!(
            "GET /ws answered {} instead of 101: {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        ));
    }
    let headers = resp.headers().clone();
    let accept = headers.get("sec-websocket-accept").map(|v| v.as_bytes());
    if accept != Some(websocket::accept_key(key).as_bytes()) {
        return Err(format!("wrong Sec-WebSocket-Accept in 101: {headers:?}"));
    }
    let upgraded = hyper::upgrade::on(resp)
        .await
        .map_err(|e| format!("upgrade: {e}"))?;
    let mut io = TokioIo::new(upgraded);
    let mut buf = BytesMut::new();
    let mut replies = Vec::new();
    // A mask that changes per frame, as RFC 6455 wants; its value matters only on the wire.
    for (i, frame) in frames.iter().enumerate() {
        let mask = (0x5a17_c3e1u32.wrapping_mul(i as u32 + 1)).to_be_bytes();
        io.write_all(&websocket::encode(frame, Some(mask)))
            .await
            .map_err(|e| format!("WebSocket write: {e}"))?;
        replies.push(read_frame(&mut io, &mut buf).await?);
    }
    let close = WsFrame {
        fin: true,
        opcode: OP_CLOSE,
        payload: Bytes::copy_from_slice(&1000u16.to_be_bytes()),
    };
    io.write_all(&websocket::encode(&close, Some([1, 2, 3, 4])))
        .await
        .map_err(|e| format!("WebSocket write: {e}"))?;
    let close = read_frame(&mut io, &mut buf).await?;
    // After the close handshake the server ends the connection.
    let mut rest = Vec::new();
    io.read_to_end(&mut rest)
        .await
        .map_err(|e| format!("after close: {e}"))?;
    if !rest.is_empty() || !buf.is_empty() {
        return Err(format!(
            "{} bytes after the server's close frame",
            rest.len() + buf.len()
        ));
    }
    Ok(WsSession {
        headers,
        replies,
        close,
    })
}

/// Reads one frame from the server; servers never mask (RFC 6455 §5.1).
async fn read_frame<S: tokio::io::AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut BytesMut,
) -> Result<WsFrame, String> {
    loop {
        let unmasked = buf.get(1).is_none_or(|b| b & 0x80 == 0);
        if !unmasked {
            return Err("the server masked a frame".into());
        }
        if let Some(f) = websocket::decode(buf, websocket::MAX_PAYLOAD, false)
            .map_err(|e| format!("bad frame from the server: {e}"))?
        {
            return Ok(f);
        }
        if io
            .read_buf(buf)
            .await
            .map_err(|e| format!("WebSocket read: {e}"))?
            == 0
        {
            return Err("the connection ended inside a frame".into());
        }
    }
}

/// `GET /bytes/<len>`: checks every byte against the pattern as it arrives (the first wrong
/// byte's offset is the error), and that exactly `len` came.
pub async fn download(
    addr: SocketAddr,
    http: Http,
    authority: &str,
    len: u64,
) -> Result<Transfer, String> {
    let start = Instant::now();
    let mut sender = Sender::connect(addr, http).await?;
    let req = sender
        .request("GET", authority, &format!("/bytes/{len}"))
        .body(EchoBody::empty())
        .map_err(|e| e.to_string())?;
    let resp = sender.send(req).await?;
    if resp.status() != StatusCode::OK {
        let r = read_all(resp).await?;
        return Err(format!(
            "download answered {}: {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        ));
    }
    let mut body = resp.into_body();
    let mut got = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("download broke off after {got} bytes: {e}"))?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        if let Some(at) = first_mismatch(got, data) {
            return Err(format!("byte {at} of the download is not the pattern's"));
        }
        got += data.len() as u64;
        if got > len {
            return Err(format!("download is longer than {len} bytes"));
        }
    }
    if got != len {
        return Err(format!("download ended after {got} of {len} bytes"));
    }
    Ok(Transfer {
        bytes: got,
        elapsed: start.elapsed(),
    })
}

/// `POST /digest` with `len` bytes of the pattern, generated as they are sent; the server's
/// digest (compare it with [`lab::echo::pattern::pattern_digest`]).
pub async fn upload(
    addr: SocketAddr,
    http: Http,
    authority: &str,
    len: u64,
) -> Result<(DigestReply, Transfer), String> {
    let start = Instant::now();
    let mut sender = Sender::connect(addr, http).await?;
    let req = sender
        .request("POST", authority, "/digest")
        .header(http::header::CONTENT_TYPE, "application/octet-stream")
        .body(EchoBody::pattern(len))
        .map_err(|e| e.to_string())?;
    let r = read_all(sender.send(req).await?).await?;
    let elapsed = start.elapsed();
    if r.status != StatusCode::OK {
        return Err(format!(
            "upload answered {}: {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        ));
    }
    let digest: DigestReply = serde_json::from_slice(&r.body).map_err(|e| {
        format!(
            "not a digest answer ({e}): {}",
            String::from_utf8_lossy(&r.body)
        )
    })?;
    Ok((
        digest,
        Transfer {
            bytes: len,
            elapsed,
        },
    ))
}
