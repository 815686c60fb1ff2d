//! ztunnel's node-agent server: accepts CNI plugin requests on a unix socket and applies them
//! through the [`PodManager`].
//!
//! One JSON line each way per connection. The socket is served by [`AcceptLoop`] (back-off on
//! accept errors, at most [`MAX_CONNECTIONS`] at once, descriptor headroom, drain); a request
//! line is read up to [`MAX_REQUEST`] bytes and a longer one is an error, not a cut-short parse.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mesh::accept::AcceptLoop;
use mesh::drain::DrainWatch;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{info, warn};

use super::{AgentRequest, AgentResponse};
use crate::pods::{AddPod, PodManager};

/// Largest request we read: a request is a few hundred bytes; anything bigger is not ours.
pub const MAX_REQUEST: usize = 64 << 10;

/// Binds the socket (replacing a stale one from an earlier run).
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    UnixListener::bind(path)
}

/// Connections served at once. A request is one short line; a runtime creating many pods at
/// once sends one per pod, and each waits at most [`READ_TIMEOUT`] for its line plus the time
/// ADD takes. Past the limit clients wait in the socket's listen queue (backpressure), so a
/// flood of connections costs ztunnel this many descriptors, not one per connection.
pub const MAX_CONNECTIONS: usize = 64;

/// How long a connection may take to send its request line.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the node-agent socket until `drain` fires, then lets requests in hand finish (at
/// most `deadline`): a DEL being answered is not cut off mid-way.
pub async fn serve_until(
    listener: UnixListener,
    pods: Arc<PodManager>,
    drain: DrainWatch,
    deadline: Duration,
) {
    AcceptLoop::new("CNI node agent")
        .until(drain)
        .drain_deadline(deadline)
        .max_connections(MAX_CONNECTIONS)
        .descriptor_headroom()
        .run(listener, move |stream, _peer| {
            Some(handle(stream, pods.clone()))
        })
        .await
}

async fn handle(stream: UnixStream, pods: Arc<PodManager>) {
    let (read, mut write) = stream.into_split();
    let response = match tokio::time::timeout(READ_TIMEOUT, read_request(read)).await {
        Err(_) => AgentResponse::Error {
            message: format!("timed out reading the request ({READ_TIMEOUT:?})"),
        },
        Ok(Err(message)) => AgentResponse::Error { message },
        Ok(Ok(line)) => match parse_request(&line) {
            Err(message) => AgentResponse::Error { message },
            Ok(req) => apply(req, &pods).await,
        },
    };
    let mut out = serde_json::to_string(&response).unwrap_or_else(|e| {
        format!("{{\"result\":\"error\",\"message\":\"encoding the response: {e}\"}}")
    });
    out.push('\n');
    // The connection closes after the answer: one request per connection, and after an error
    // whatever else the client sends is not read.
    let _ = write.write_all(out.as_bytes()).await;
}

/// Reads one request line, never more than [`MAX_REQUEST`] bytes: a longer line is refused
/// whole rather than parsed cut short. A last line without its newline (the client closed its
/// side) is taken as it is.
async fn read_request(read: impl AsyncRead + Unpin) -> Result<String, String> {
    let mut line = Vec::new();
    // One byte more than the limit tells a line of exactly the limit from a longer one.
    let mut reader = BufReader::new(read).take(MAX_REQUEST as u64 + 1);
    reader
        .read_until(b'\n', &mut line)
        .await
        .map_err(|e| format!("reading the request: {e}"))?;
    if line.last() == Some(&b'\n') {
        line.pop();
    }
    if line.len() > MAX_REQUEST {
        return Err(format!(
            "request longer than {} KiB: not a CNI request; closing",
            MAX_REQUEST >> 10
        ));
    }
    String::from_utf8(line).map_err(|e| format!("malformed request: not UTF-8 ({e})"))
}

/// Parses one request line (sans-IO; the fuzz target `cni_request` drives it). The error is
/// the message the plugin gets back.
pub fn parse_request(line: &str) -> Result<AgentRequest, String> {
    serde_json::from_str::<AgentRequest>(line.trim()).map_err(|e| format!("malformed request: {e}"))
}

async fn apply(req: AgentRequest, pods: &PodManager) -> AgentResponse {
    match req {
        AgentRequest::Add {
            uid,
            name,
            namespace,
            ip,
            netns,
            service_account,
            ..
        } => match pods
            .add(AddPod {
                uid,
                name: name.clone(),
                namespace: namespace.clone(),
                ip,
                netns,
                service_account,
            })
            .await
        {
            Ok(captured) => {
                info!(pod = %format!("{namespace}/{name}"), captured, "CNI ADD");
                AgentResponse::Ok {
                    captured,
                    message: if captured {
                        "captured".into()
                    } else {
                        "not in the mesh; left untouched".into()
                    },
                }
            }
            Err(e) => {
                warn!(pod = %format!("{namespace}/{name}"), error = %e, "CNI ADD failed");
                AgentResponse::Error {
                    message: e.to_string(),
                }
            }
        },
        AgentRequest::Del {
            uid,
            name,
            namespace,
            ..
        } => match pods.remove(&uid).await {
            Ok(was) => {
                info!(pod = %format!("{namespace}/{name}"), was_captured = was, "CNI DEL");
                AgentResponse::Ok {
                    captured: false,
                    message: "removed".into(),
                }
            }
            Err(e) => AgentResponse::Error {
                message: e.to_string(),
            },
        },
    }
}
