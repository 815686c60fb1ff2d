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

use super::kube::{KubeError, Kubeconfig};
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
    /// A kubeconfig for the Kubernetes API (the installer writes it): the plugin reads the
    /// pod and its namespace there to decide whether the pod is ambient, so that ADD never
    /// waits for the control plane. Without it, ztunnel decides from its configuration.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// Namespaces whose pods are never captured (default: `kube-system`). Their ADD returns
    /// at once, without the API or ztunnel: a node whose ztunnel is down still starts them.
    #[serde(default)]
    pub exclude_namespaces: Option<Vec<String>>,
}

/// Namespaces left alone unless the configuration says otherwise.
pub const DEFAULT_EXCLUDED_NAMESPACES: &[&str] = &["kube-system"];
/// How long each Kubernetes API request may take.
const API_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether a pod with these labels, in a namespace with these, is in the ambient mesh: the
/// pod's `istio.io/dataplane-mode` decides if set (`none` opts out), else the namespace's.
pub fn is_ambient(
    pod: &std::collections::BTreeMap<String, String>,
    namespace: &std::collections::BTreeMap<String, String>,
) -> bool {
    const MODE: &str = "istio.io/dataplane-mode";
    match pod.get(MODE).map(String::as_str) {
        Some("none") => false,
        Some("ambient") => true,
        _ => namespace.get(MODE).map(String::as_str) == Some("ambient"),
    }
}

/// What ztunnel must be told of a pod, or that it is none of ztunnel's business.
enum Decision {
    /// Not ambient, excluded, or ztunnel's own pod: return the previous result unchanged.
    LeaveAlone,
    /// Capture it; the service account when the API said it.
    Capture { service_account: Option<String> },
}

/// Decides from the configuration and, when a kubeconfig is given, the Kubernetes API.
fn decide(conf: &NetConf, namespace: &str, name: &str) -> Result<Decision, CniError> {
    let excluded = match &conf.exclude_namespaces {
        Some(list) => list.iter().any(|n| n == namespace),
        None => DEFAULT_EXCLUDED_NAMESPACES.contains(&namespace),
    };
    if excluded {
        return Ok(Decision::LeaveAlone);
    }
    let Some(path) = &conf.kubeconfig else {
        return Ok(Decision::Capture {
            service_account: None,
        });
    };
    let api = Kubeconfig::load(path).map_err(|e| {
        CniError::new(
            INVALID_CONFIG,
            "cannot use the plugin's kubeconfig",
            e.to_string(),
        )
    })?;
    let unavailable = |e: KubeError| {
        CniError::new(
            TRY_AGAIN,
            "cannot read the pod from the Kubernetes API",
            e.to_string(),
        )
    };
    let pod = api
        .pod(namespace, name, API_TIMEOUT)
        .map_err(unavailable)?
        .ok_or_else(|| {
            CniError::new(
                TRY_AGAIN,
                "the pod is not in the Kubernetes API",
                format!("{namespace}/{name}"),
            )
        })?;
    // ztunnel's own pod must start before any ztunnel runs on the node.
    if pod.host_network || pod.labels.get("app").map(String::as_str) == Some("ztunnel") {
        return Ok(Decision::LeaveAlone);
    }
    let ns_labels = api
        .namespace_labels(namespace, API_TIMEOUT)
        .map_err(unavailable)?
        .unwrap_or_default();
    if !is_ambient(&pod.labels, &ns_labels) {
        return Ok(Decision::LeaveAlone);
    }
    Ok(Decision::Capture {
        service_account: Some(pod.service_account),
    })
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
            let pass = |prev: Value| {
                let mut out = prev;
                out["cniVersion"] = Value::String(version.clone());
                out.to_string()
            };
            let service_account = match decide(&conf, &namespace, &name).map_err(&fail)? {
                Decision::LeaveAlone => return Ok(pass(prev)),
                Decision::Capture { service_account } => service_account,
            };
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
                service_account,
            };
            match ask(&socket, &req, ADD_TIMEOUT).map_err(&fail)? {
                AgentResponse::Ok { .. } => Ok(pass(prev)),
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
