//! Clients that talk to echo apps from inside a pod netns: raw TCP echo, HTTP/1.1 and HTTP/2
//! GET. Used by tests, the demo and `amesh-lab client`.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::echo::EchoReply;
use crate::netns::{self, NetnsError};

/// A client exchange that failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("connecting from netns {netns} to {addr} failed: {source}")]
    Connect {
        netns: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to {addr} failed: {source}")]
    Io {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP exchange with {addr} failed: {source}")]
    Http {
        addr: String,
        #[source]
        source: hyper::Error,
    },
    #[error("bad HTTP request to {addr}: {source}")]
    Request {
        addr: String,
        #[source]
        source: http::Error,
    },
    #[error("{addr} did not answer within {0:?}", .timeout)]
    Timeout { addr: String, timeout: Duration },
    #[error("{addr} answered {status} with a body that is not an echo reply: {body:?}")]
    NotEcho {
        addr: String,
        status: StatusCode,
        body: String,
    },
}

/// Which HTTP version to speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpVersion {
    Http1,
    /// HTTP/2 with prior knowledge (h2c).
    Http2,
}

/// Opens a TCP connection from inside `netns` to `addr`. The socket belongs to that netns for
/// its whole life, so the caller may use it from any thread (or hand it to tokio).
pub fn connect_in(
    netns: &str,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream, ClientError> {
    let stream =
        netns::run_in(netns, || TcpStream::connect_timeout(&addr, timeout))?.map_err(|source| {
            ClientError::Connect {
                netns: netns.to_string(),
                addr,
                source,
            }
        })?;
    let io = |source| ClientError::Io {
        addr: addr.to_string(),
        source,
    };
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    Ok(stream)
}

/// Sends `msg`, half-closes, and returns everything the peer sends until its EOF.
pub fn tcp_echo(stream: &mut TcpStream, msg: &[u8]) -> Result<Vec<u8>, ClientError> {
    let addr = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let io = |source| ClientError::Io {
        addr: addr.clone(),
        source,
    };
    stream.write_all(msg).map_err(io)?;
    stream.shutdown(Shutdown::Write).map_err(io)?;
    let mut out = Vec::new();
    stream.read_to_end(&mut out).map_err(io)?;
    Ok(out)
}

/// Connects from `netns` to `addr` and does a raw TCP echo of `msg`.
pub fn tcp_echo_from(
    netns: &str,
    addr: SocketAddr,
    msg: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, ClientError> {
    let mut s = connect_in(netns, addr, timeout)?;
    tcp_echo(&mut s, msg)
}

/// Sends `GET path` over `stream` and parses the echo app's answer.
pub async fn http_get(
    stream: TcpStream,
    version: HttpVersion,
    authority: &str,
    path: &str,
    timeout: Duration,
) -> Result<(StatusCode, EchoReply), ClientError> {
    let addr = authority.to_string();
    tokio::time::timeout(timeout, http_get_inner(stream, version, authority, path))
        .await
        .map_err(|_| ClientError::Timeout { addr, timeout })?
}

async fn http_get_inner(
    stream: TcpStream,
    version: HttpVersion,
    authority: &str,
    path: &str,
) -> Result<(StatusCode, EchoReply), ClientError> {
    let addr = authority.to_string();
    let io_err = |source| ClientError::Io {
        addr: addr.clone(),
        source,
    };
    let http_err = |source| ClientError::Http {
        addr: addr.clone(),
        source,
    };
    stream.set_nonblocking(true).map_err(io_err)?;
    let stream = tokio::net::TcpStream::from_std(stream).map_err(io_err)?;
    let io = TokioIo::new(stream);
    // HTTP/1.1 sends the origin form with a Host header; HTTP/2 needs :scheme and :authority.
    let request = match version {
        HttpVersion::Http1 => Request::get(path).header(http::header::HOST, authority),
        HttpVersion::Http2 => Request::get(format!("http://{authority}{path}")),
    }
    .body(Empty::<Bytes>::new())
    .map_err(|source| ClientError::Request {
        addr: addr.clone(),
        source,
    })?;
    let response = match version {
        HttpVersion::Http1 => {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(http_err)?;
            tokio::spawn(conn);
            sender.send_request(request).await.map_err(http_err)?
        }
        HttpVersion::Http2 => {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(http_err)?;
            tokio::spawn(conn);
            sender.send_request(request).await.map_err(http_err)?
        }
    };
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(http_err)?
        .to_bytes();
    let reply = serde_json::from_slice(&body).map_err(|_| ClientError::NotEcho {
        addr: addr.clone(),
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })?;
    Ok((status, reply))
}
