//! ztunnel's node-agent server: accepts CNI plugin requests on a unix socket and applies them
//! through the [`PodManager`](crate::pods::PodManager).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{info, warn};

use super::{AgentRequest, AgentResponse};
use crate::pods::{AddPod, PodManager};

/// Largest request we read: a request is a few hundred bytes; anything bigger is not ours.
const MAX_REQUEST: usize = 64 << 10;

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

pub async fn serve(listener: UnixListener, pods: Arc<PodManager>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let pods = pods.clone();
                tokio::spawn(async move { handle(stream, pods).await });
            }
            Err(e) => {
                warn!(error = %e, "node-agent accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle(stream: UnixStream, pods: Arc<PodManager>) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read).take(MAX_REQUEST as u64);
    let response =
        match tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line)).await {
            Err(_) => AgentResponse::Error {
                message: "timed out reading the request".into(),
            },
            Ok(Err(e)) => AgentResponse::Error {
                message: format!("reading the request: {e}"),
            },
            Ok(Ok(_)) => match serde_json::from_str::<AgentRequest>(line.trim()) {
                Err(e) => AgentResponse::Error {
                    message: format!("malformed request: {e}"),
                },
                Ok(req) => apply(req, &pods).await,
            },
        };
    let mut out = serde_json::to_string(&response).unwrap_or_else(|e| {
        format!("{{\"result\":\"error\",\"message\":\"encoding the response: {e}\"}}")
    });
    out.push('\n');
    let _ = write.write_all(out.as_bytes()).await;
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
