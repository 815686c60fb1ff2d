//! The `amesh-cni` chained CNI plugin's logic: read the runtime's environment and stdin config,
//! ask ztunnel to capture (ADD) or release (DEL) the pod, and answer in CNI's JSON. ADD fails
//! the pod when ztunnel cannot confirm capture, so no pod of the mesh starts uncaptured.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use super::{AgentRequest, AgentResponse, DEFAULT_SOCKET};

/// How long ADD waits for ztunnel (it may wait for config and a certificate itself).
const ADD_TIMEOUT: Duration = Duration::from_secs(40);
const DEL_TIMEOUT: Duration = Duration::from_secs(10);

/// The network configuration the runtime passes on stdin.
#[derive(Debug, Deserialize)]
pub struct NetConf {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// ztunnel's node-agent socket (default [`DEFAULT_SOCKET`]).
    #[serde(default)]
    pub ztunnel_socket: Option<PathBuf>,
    /// The result of the previous plugin in the chain.
    #[serde(rename = "prevResult", default)]
    pub prev_result: Option<Value>,
}

/// A CNI error (spec: `code`, `msg`, `details`), printed on stdout with a non-zero exit.
#[derive(Debug, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    fn new(code: u32, msg: &str, details: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.to_string(),
            details: details.into(),
        }
    }

    pub fn to_json(&self, cni_version: &str) -> String {
        json!({"cniVersion": cni_version, "code": self.code, "msg": self.msg, "details": self.details}).to_string()
    }
}

// CNI spec error codes.
const INVALID_ENV: u32 = 4;
const DECODE: u32 = 6;
const INVALID_CONFIG: u32 = 7;
const CONTAINER_UNKNOWN: u32 = 3;
const TRY_AGAIN: u32 = 11;
const ZTUNNEL_REFUSED: u32 = 100;

pub const SUPPORTED_VERSIONS: &[&str] = &["0.4.0", "1.0.0", "1.1.0"];

/// Whether two paths name the same file (device and inode, links followed).
fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// Runs one plugin invocation; returns what to print on stdout, or the error to print.
pub fn run(env: &HashMap<String, String>, stdin: &str) -> Result<String, (CniError, String)> {
    let command = env.get("CNI_COMMAND").map(String::as_str).unwrap_or("");
    if command == "VERSION" {
        return Ok(
            json!({"cniVersion": "1.0.0", "supportedVersions": SUPPORTED_VERSIONS}).to_string(),
        );
    }
    let conf: NetConf = serde_json::from_str(stdin).map_err(|e| {
        (
            CniError::new(
                DECODE,
                "malformed network configuration on stdin",
                e.to_string(),
            ),
            "1.0.0".to_string(),
        )
    })?;
    let version = conf.cni_version.clone();
    let fail = |e: CniError| (e, version.clone());
    if conf.plugin_type != "amesh-cni" {
        return Err(fail(CniError::new(
            INVALID_CONFIG,
            "network configuration is not for amesh-cni",
            format!("type is {:?}", conf.plugin_type),
        )));
    }
    let socket = conf
        .ztunnel_socket
        .clone()
        .unwrap_or_else(|| DEFAULT_SOCKET.into());
    let var = |k: &str| -> Result<String, (CniError, String)> {
        env.get(k)
            .filter(|v| !v.is_empty())
            .cloned()
            .ok_or_else(|| {
                fail(CniError::new(
                    INVALID_ENV,
                    "missing environment variable",
                    k.to_string(),
                ))
            })
    };
    let args = parse_cni_args(env.get("CNI_ARGS").map(String::as_str).unwrap_or(""));
    match command {
        "ADD" => {
            let container_id = var("CNI_CONTAINERID")?;
            let netns = PathBuf::from(var("CNI_NETNS")?);
            if !netns.exists() {
                return Err(fail(CniError::new(
                    CONTAINER_UNKNOWN,
                    "the pod's network namespace does not exist",
                    netns.display().to_string(),
                )));
            }
            // The runtime runs the plugin in the host's netns: a pod's is never that one.
            if same_file(&netns, std::path::Path::new("/proc/self/ns/net")) {
                return Err(fail(CniError::new(
                    INVALID_ENV,
                    "CNI_NETNS is the host's network namespace, not a pod's",
                    netns.display().to_string(),
                )));
            }
            let prev = conf.prev_result.clone().ok_or_else(|| {
                fail(CniError::new(
                    INVALID_CONFIG,
                    "amesh-cni is a chained plugin and needs prevResult",
                    "put it after the pod network plugin in the conflist",
                ))
            })?;
            let ip = first_ip(&prev).ok_or_else(|| {
                fail(CniError::new(
                    INVALID_CONFIG,
                    "prevResult has no pod IP",
                    prev.to_string(),
                ))
            })?;
            let (namespace, name) = pod_name(&args).map_err(&fail)?;
            let uid = args
                .get("K8S_POD_UID")
                .cloned()
                .unwrap_or_else(|| format!("{namespace}/{name}"));
            let req = AgentRequest::Add {
                container_id,
                uid,
                name,
                namespace,
                ip,
                netns,
            };
            match ask(&socket, &req, ADD_TIMEOUT).map_err(&fail)? {
                AgentResponse::Ok { .. } => {
                    let mut out = prev;
                    out["cniVersion"] = Value::String(version.clone());
                    Ok(out.to_string())
                }
                AgentResponse::Error { message } => Err(fail(CniError::new(
                    ZTUNNEL_REFUSED,
                    "ztunnel could not capture the pod",
                    message,
                ))),
            }
        }
        "DEL" => {
            let container_id = env.get("CNI_CONTAINERID").cloned().unwrap_or_default();
            let Ok((namespace, name)) = pod_name(&args) else {
                // Nothing identifies the pod: nothing of ours can be left behind.
                return Ok(String::new());
            };
            let uid = args
                .get("K8S_POD_UID")
                .cloned()
                .unwrap_or_else(|| format!("{namespace}/{name}"));
            let req = AgentRequest::Del {
                container_id,
                uid,
                name,
                namespace,
            };
            // DEL must succeed when there is nothing to undo; a ztunnel that is down drops
            // pods whose netns is gone when it restarts.
            match ask(&socket, &req, DEL_TIMEOUT) {
                Ok(AgentResponse::Error { message }) => Err(fail(CniError::new(
                    ZTUNNEL_REFUSED,
                    "ztunnel failed to release the pod",
                    message,
                ))),
                _ => Ok(String::new()),
            }
        }
        "CHECK" => Ok(String::new()),
        "" => Err(fail(CniError::new(
            INVALID_ENV,
            "missing environment variable",
            "CNI_COMMAND",
        ))),
        other => Err(fail(CniError::new(
            INVALID_ENV,
            "unknown CNI_COMMAND",
            other.to_string(),
        ))),
    }
}

/// `K1=V1;K2=V2` as passed by the runtime.
pub fn parse_cni_args(args: &str) -> HashMap<String, String> {
    args.split(';')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn pod_name(args: &HashMap<String, String>) -> Result<(String, String), CniError> {
    match (args.get("K8S_POD_NAMESPACE"), args.get("K8S_POD_NAME")) {
        (Some(ns), Some(name)) if !ns.is_empty() && !name.is_empty() => {
            Ok((ns.clone(), name.clone()))
        }
        _ => Err(CniError::new(
            INVALID_ENV,
            "CNI_ARGS lacks K8S_POD_NAMESPACE and K8S_POD_NAME",
            "the runtime must pass the pod's namespace and name",
        )),
    }
}

fn first_ip(prev: &Value) -> Option<IpAddr> {
    prev.get("ips")?.as_array()?.iter().find_map(|ip| {
        let addr = ip.get("address")?.as_str()?;
        addr.split('/').next()?.parse().ok()
    })
}

fn ask(
    socket: &std::path::Path,
    req: &AgentRequest,
    timeout: Duration,
) -> Result<AgentResponse, CniError> {
    let unreachable = |e: std::io::Error| {
        CniError::new(
            TRY_AGAIN,
            "ztunnel is not reachable on this node",
            format!(
                "{}: {e} (is the ztunnel DaemonSet running?)",
                socket.display()
            ),
        )
    };
    let mut stream = UnixStream::connect(socket).map_err(unreachable)?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(unreachable)?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(unreachable)?;
    let mut line = serde_json::to_string(req)
        .map_err(|e| CniError::new(ZTUNNEL_REFUSED, "encoding the request", e.to_string()))?;
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(unreachable)?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .map_err(unreachable)?;
    serde_json::from_str(answer.trim()).map_err(|e| {
        CniError::new(
            ZTUNNEL_REFUSED,
            "ztunnel sent an unreadable answer",
            format!("{e}: {answer:?}"),
        )
    })
}
