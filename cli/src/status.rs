//! `amesh status`: one line per mesh component, from what each already exposes.
//!
//! - The controller: its debug endpoint (`/debug/status` on 15014): version, readiness, config
//!   version, connected xDS clients, the CA root's expiry. A lab whose control plane is a
//!   local config file (`AMESH_LAB_CONTROL_PLANE=file`) has none, and says so.
//! - Each node's ztunnel and each waypoint: readiness from `/healthz/ready` (15021); version,
//!   xDS state, config version, certificates, captured pods and capture mode from
//!   `/config_dump` (its `proxy` part, see ztunnel/src/dump.rs).
//!
//! A component that does not answer is listed with the error, and the command fails at the
//! end (so scripts see it), after printing everything it could read.

use anyhow::bail;
use serde::Serialize;
use serde_json::Value;

use crate::args::{Output, StatusArgs, TargetArgs};
use crate::config::{parse_time, table};
use crate::target::{Component, ComponentKind, Target, CONTROLLER_DEBUG_PORT, READINESS_PORT};

/// The whole report.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// `lab <id>` or `the cluster`.
    pub target: String,
    /// `controller`, or `file` (a lab on a local config file, no controller).
    pub control_plane: String,
    /// Why there is no controller line, when there is none.
    pub note: Option<String>,
    pub components: Vec<ComponentStatus>,
}

/// One component's line.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ComponentStatus {
    pub kind: String,
    pub namespace: String,
    pub pod: String,
    pub node: Option<String>,
    pub version: Option<String>,
    pub ready: Option<bool>,
    /// Proxies: `connected`, `disconnected` or `file` (a local config file, no xDS). The
    /// controller: how many xDS clients are connected.
    pub xds: Option<String>,
    /// Proxies: every subscribed type has been applied at least once.
    pub xds_synced: Option<bool>,
    /// Proxies: the version of their config snapshot; the controller: a digest of every
    /// resource it serves.
    pub config_version: Option<String>,
    /// Certificates held (the controller: its CA root).
    pub certificates: Option<usize>,
    /// The earliest expiry of those certificates' leaves (the controller: the root's), RFC 3339.
    pub earliest_expiry: Option<String>,
    /// ztunnel: pods it captures.
    pub captured_pods: Option<usize>,
    /// ztunnel: the capture backend in use (`ebpf`, `nft`, `none`).
    pub capture_mode: Option<String>,
    /// The controller: its xDS clients (node ids).
    pub clients: Option<Vec<String>>,
    /// Proxies, as the controller sees their stream (istioctl proxy-status's notion):
    /// `SYNCED` when every type's last response sent is ACKed, `STALE` when one is not (or
    /// was NACKed), `NOT CONNECTED` when the controller has no stream from this proxy's IP.
    /// `None` without a controller to ask.
    pub controller_sync: Option<String>,
    /// What could not be read.
    pub error: Option<String>,
}

pub async fn run(target: &TargetArgs, args: StatusArgs) -> anyhow::Result<()> {
    let target = Target::open(target).await?;
    let status = collect(&target).await?;
    let out = match args.output {
        Output::Json => serde_json::to_string_pretty(&status)? + "\n",
        Output::Yaml => serde_yaml::to_string(&status)?,
        Output::Table => render(&status),
    };
    print!("{out}");
    let failed: Vec<String> = (status.components.iter())
        .filter(|c| c.error.is_some() || c.ready == Some(false))
        .map(|c| format!("{} {}/{}", c.kind, c.namespace, c.pod))
        .collect();
    if !failed.is_empty() {
        bail!("not ready or not answering: {}", failed.join(", "));
    }
    Ok(())
}

/// Reads every component of `target`.
pub async fn collect(target: &Target) -> anyhow::Result<Status> {
    let controllers = target.controllers().await?;
    let (control_plane, note) = match (target.lab(), controllers.is_empty()) {
        (_, false) => ("controller", None),
        (Some(_), true) => (
            "file",
            Some(
                "no controller: this lab's ztunnels read a local config file \
                 (AMESH_LAB_CONTROL_PLANE=file)"
                    .to_string(),
            ),
        ),
        (None, true) => (
            "controller",
            Some(format!(
                "no running controller pod (label {}) in namespace {}",
                crate::target::CONTROLLER_SELECTOR,
                match target {
                    Target::Kube(k) => k.istio_namespace.as_str(),
                    Target::Lab(_) => "",
                }
            )),
        ),
    };
    let mut components = Vec::new();
    // Every controller's clients, for the proxies' SYNCED column.
    let mut streams: Option<Vec<Value>> = None;
    for c in &controllers {
        let (line, clients) = controller(target, c).await;
        if let Some(clients) = clients {
            streams.get_or_insert_with(Vec::new).extend(clients);
        }
        components.push(line);
    }
    for p in target
        .ztunnels()
        .await?
        .into_iter()
        .chain(target.waypoints().await?)
    {
        let mut line = proxy(target, &p).await;
        line.controller_sync = streams.as_deref().map(|s| sync_of(s, &p));
        components.push(line);
    }
    Ok(Status {
        target: target.describe(),
        control_plane: control_plane.to_string(),
        note,
        components,
    })
}

fn base(c: &Component) -> ComponentStatus {
    ComponentStatus {
        kind: c.kind.name().to_string(),
        namespace: c.namespace.clone(),
        pod: c.pod.clone(),
        node: c.node.clone(),
        ..Default::default()
    }
}

fn string(v: &Value, pointer: &str) -> Option<String> {
    match v.pointer(pointer)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// How the controller's streams see proxy `p`: its stream is the one whose node id holds
/// the proxy's IP (`ztunnel~<ip>~…`, `waypoint~<ip>~…`, Istio's node id layout).
fn sync_of(streams: &[Value], p: &Component) -> String {
    let ip = p.ip.to_string();
    let mine: Vec<&Value> = streams
        .iter()
        .filter(|s| {
            (s.get("nodeId").and_then(Value::as_str))
                .is_some_and(|id| id.split('~').nth(1) == Some(ip.as_str()))
        })
        .collect();
    if mine.is_empty() {
        return "NOT CONNECTED".into();
    }
    let synced = mine.iter().all(|s| {
        let types = s.get("types").and_then(Value::as_array);
        types.is_some_and(|types| {
            !types.is_empty()
                && types.iter().all(|t| {
                    t.get("lastSentNonce").is_some_and(Value::is_string)
                        && t.get("lastSentNonce") == t.get("lastAckedNonce")
                        && t.get("nacks").and_then(Value::as_u64) == Some(0)
                })
        })
    });
    if synced { "SYNCED" } else { "STALE" }.into()
}

/// The controller's line, from its debug endpoint, and its xDS streams (`None` when it did
/// not answer).
async fn controller(target: &Target, c: &Component) -> (ComponentStatus, Option<Vec<Value>>) {
    let mut out = base(c);
    let s = match target
        .get_json(c, CONTROLLER_DEBUG_PORT, "/debug/status")
        .await
    {
        Ok(s) => s,
        Err(e) => {
            out.error = Some(format!("{e:#}"));
            return (out, None);
        }
    };
    out.version = string(&s, "/version");
    out.ready = s.get("ready").and_then(Value::as_bool);
    out.config_version = string(&s, "/configVersion");
    let clients: Vec<String> = (s.get("clients").and_then(Value::as_array).into_iter())
        .flatten()
        .map(|c| string(c, "/nodeId").unwrap_or_else(|| "(no request yet)".into()))
        .collect();
    out.xds = Some(format!("{} clients", clients.len()));
    out.clients = Some(clients);
    let root_expiry = string(&s, "/ca/root/expirationTime");
    out.certificates = Some(usize::from(root_expiry.is_some()));
    out.earliest_expiry = root_expiry;
    let streams = s.get("clients").and_then(Value::as_array).cloned();
    (out, Some(streams.unwrap_or_default()))
}

/// A ztunnel's or waypoint's line: readiness, then its `/config_dump`.
async fn proxy(target: &Target, c: &Component) -> ComponentStatus {
    let mut out = base(c);
    let mut errors = Vec::new();
    match target.get(c, READINESS_PORT, "/healthz/ready").await {
        Ok(_) => out.ready = Some(true),
        // A 503 is an answer: not ready. No answer at all is an error.
        Err(e) if format!("{e:#}").contains("status 503") => out.ready = Some(false),
        Err(e) => errors.push(format!("{e:#}")),
    }
    match target
        .get_json(c, target.config_dump_port(), "/config_dump")
        .await
    {
        Ok(dump) => fill_from_dump(&mut out, &dump, c.kind),
        Err(e) => errors.push(format!("{e:#}")),
    }
    if !errors.is_empty() {
        out.error = Some(errors.join("; "));
    }
    out
}

/// What a proxy's `/config_dump` says about it.
pub fn fill_from_dump(out: &mut ComponentStatus, dump: &Value, kind: ComponentKind) {
    out.version = string(dump, "/proxy/version");
    out.config_version = string(dump, "/version");
    match dump.pointer("/proxy/xds") {
        Some(Value::Object(x)) => {
            let connected = x.get("connected").and_then(Value::as_bool) == Some(true);
            out.xds = Some(
                if connected {
                    "connected"
                } else {
                    "disconnected"
                }
                .into(),
            );
            out.xds_synced = x.get("synced").and_then(Value::as_bool);
        }
        Some(Value::Null) => out.xds = Some("file".into()),
        _ => {}
    }
    let certs = dump
        .get("certificates")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    out.certificates = Some(certs.len());
    out.earliest_expiry = certs
        .iter()
        .filter_map(|c| c.pointer("/certChain/0/expirationTime")?.as_str())
        .filter_map(|s| Some((parse_time(s)?, s)))
        .min_by_key(|(t, _)| *t)
        .map(|(_, s)| s.to_string());
    if kind == ComponentKind::Ztunnel {
        out.captured_pods = dump.get("pods").and_then(Value::as_array).map(Vec::len);
        out.capture_mode = string(dump, "/proxy/captureMode");
    }
}

/// The table: a header line for the control plane, then one row per component.
pub fn render(s: &Status) -> String {
    let mut out = format!("{} (control plane: {})\n", s.target, s.control_plane);
    if let Some(note) = &s.note {
        out.push_str(note);
        out.push('\n');
    }
    out.push('\n');
    let dash = || "-".to_string();
    let mut rows = vec![[
        "COMPONENT",
        "NAME",
        "NODE",
        "VERSION",
        "READY",
        "XDS",
        "SYNC",
        "CONFIG VERSION",
        "CERTS",
        "EARLIEST EXPIRY",
        "PODS",
        "CAPTURE",
    ]
    .map(String::from)
    .to_vec()];
    for c in &s.components {
        let xds = match (&c.xds, c.xds_synced) {
            (Some(x), Some(false)) => format!("{x} (not synced)"),
            (Some(x), _) => x.clone(),
            (None, _) => dash(),
        };
        rows.push(vec![
            c.kind.clone(),
            format!("{}/{}", c.namespace, c.pod),
            c.node.clone().unwrap_or_else(dash),
            c.version.clone().unwrap_or_else(dash),
            c.ready.map_or_else(dash, |r| r.to_string()),
            xds,
            c.controller_sync.clone().unwrap_or_else(dash),
            c.config_version.clone().unwrap_or_else(dash),
            c.certificates.map_or_else(dash, |n| n.to_string()),
            c.earliest_expiry.clone().unwrap_or_else(dash),
            c.captured_pods.map_or_else(dash, |n| n.to_string()),
            c.capture_mode.clone().unwrap_or_else(dash),
        ]);
    }
    out.push_str(&table(&rows));
    for c in &s.components {
        if let Some(e) = &c.error {
            out.push_str(&format!("{} {}/{}: {e}\n", c.kind, c.namespace, c.pod));
        }
    }
    out
}
