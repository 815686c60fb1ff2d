//! `amesh explain <source pod> <host|ip>:<port> [--http METHOD PATH --header K=V]`: what the
//! data plane would do with that connection or request, and why.
//!
//! Nothing here decides on its own. The state each proxy holds is fetched from its admin
//! endpoint and rebuilt into the data plane's own types (a ztunnel's `/config_dump` carries
//! its config in the local-file format, [`mesh::state::LocalConfig`], which becomes a
//! [`Snapshot`] again; a waypoint's carries its L7 resources, which become an
//! [`L7Snapshot`]), and then the functions the proxies call on every connection decide:
//! [`ztunnel::proxy::outbound::route`] on the source's node, [`mesh::authz::authorize`] on
//! the destination's node, and the waypoint's [`waypoint::pipeline`] phases (JWT, L7
//! authorization, route selection) for `--http`. A second implementation could drift from
//! the data path; these cannot.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use base64::Engine;
use mesh::authz::{authorize, policy_matches, ConnInfo, Decision, PolicyMatch, Verdict};
use mesh::state::{LocalConfig, Service, Snapshot, Workload};
use mesh::Identity;
use serde::Serialize;
use serde_json::Value;
use waypoint::l7::{jwt, L7Snapshot, L7Store, RequestAttrs, RouteView};
use waypoint::pipeline::{applicable, decide, select_route, GatewayRef, RouteChoice};
use ztunnel::proxy::outbound::{self, Caller, Route};

use crate::args::{ExplainArgs, Output, TargetArgs};
use crate::target::{Component, Target};

/// One node's ztunnel as `explain` reads it.
struct Node {
    component: Component,
    snapshot: Snapshot,
    /// The pods this ztunnel captures: `(namespace, name, ip)`.
    pods: Vec<(String, String, IpAddr)>,
}

/// The whole answer, printed as text or serialized for `-o json|yaml`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    pub source: Source,
    pub destination: Destination,
    pub route: RouteInfo,
    /// The waypoint's L7 decision, for `--http` through a waypoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpInfo>,
    /// The destination ztunnel's inbound authorization, where one authorizes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inbound: Option<Inbound>,
    /// `allowed` or `denied`.
    pub verdict: String,
    /// One line: what decided.
    pub reason: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    pub pod: String,
    pub ip: IpAddr,
    /// Whether a ztunnel captures the pod (else it sends plaintext, with no identity).
    pub captured: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The identity its tunnels present (captured pods only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Destination {
    /// As given.
    pub given: String,
    /// The address the app would dial.
    pub address: SocketAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteInfo {
    /// `hbone`, `waypoint`, `plain`, `passthrough`, `uncaptured`, `no-endpoints`,
    /// `waypoint-unavailable`.
    pub kind: String,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waypoint: Option<String>,
    /// The workload the connection reaches (for a waypoint: the waypoint's pod).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<SocketAddr>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Inbound {
    pub node: String,
    pub workload: String,
    pub identity: String,
    /// The identity the destination's ztunnel sees (proven by mTLS); none for plaintext.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_identity: Option<String>,
    /// The port compared with policies: the target port.
    pub port: u16,
    /// Every policy that applies to the destination, with the rule that matches, if any.
    pub policies: Vec<PolicyMatch>,
    pub decision: Decision,
    pub summary: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpInfo {
    pub method: String,
    pub path: String,
    pub gateway: String,
    /// `no token`, `verified: <principal>`, or why the token was rejected (401).
    pub jwt: String,
    /// The L7 policies bound to the waypoint or the service, and whether each matches.
    pub policies: Vec<L7PolicyMatch>,
    /// `allowed`, or `denied` (403).
    pub decision: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub denied_by: Option<String>,
    /// `default` (no route attaches: the addressed service), `matched` or `none` (404).
    pub route_choice: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<u32>,
    /// The backends the route splits between (`service:port weight`).
    pub backends: Vec<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct L7PolicyMatch {
    pub policy: String,
    pub action: String,
    pub matches: bool,
}

pub async fn run(target: &TargetArgs, args: ExplainArgs) -> anyhow::Result<()> {
    let target = Target::open(target).await?;
    let explanation = explain(&target, &args).await?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&explanation)?),
        Output::Yaml => print!("{}", serde_yaml::to_string(&explanation)?),
        Output::Table => print!("{}", render(&explanation)),
    }
    Ok(())
}

/// Reads the proxies' state and decides with the data plane's functions.
pub async fn explain(target: &Target, args: &ExplainArgs) -> anyhow::Result<Explanation> {
    let nodes = read_nodes(target).await?;
    let (src_ns, src_name) = match args.source.split_once('/') {
        Some((ns, name)) => (ns.to_string(), name.to_string()),
        None => ("default".to_string(), args.source.clone()),
    };
    // Any node's config lists every workload and service; the source's is the one that routes.
    let any_ns = !args.source.contains('/');
    let captured = nodes.iter().find_map(|n| {
        n.pods
            .iter()
            .find(|(ns, name, _)| *name == src_name && (any_ns || *ns == src_ns))
            .map(|(ns, _, ip)| (n, ns.clone(), *ip))
    });
    let captured_on = captured.as_ref().map(|(n, _, _)| *n);
    let (src_ip, src_ns) = match &captured {
        Some((_, ns, ip)) => (*ip, ns.clone()),
        None => uncaptured_pod(target, &nodes[0].snapshot, &src_ns, &src_name, &args.source)?,
    };
    let view = captured_on.unwrap_or(&nodes[0]);
    let dst = resolve_destination(&view.snapshot, &args.destination, &src_ns)?;
    let mut source = Source {
        pod: format!("{src_ns}/{src_name}"),
        ip: src_ip,
        captured: captured_on.is_some(),
        node: captured_on.and_then(|n| n.component.node.clone()),
        identity: None,
    };
    let destination = Destination {
        given: args.destination.clone(),
        address: dst.0,
        service: dst.1.as_ref().map(|s| s.key()),
    };
    let http = parse_http(args)?;

    let Some(src_node) = captured_on else {
        // Not captured: the pod's plaintext goes straight to the address (a pod IP; a VIP is
        // the cluster's kube-proxy's business, which picks an endpoint on the target port).
        let (workload, port) = plaintext_target(&view.snapshot, dst.0, dst.1.as_ref())?;
        let route = RouteInfo {
            kind: "uncaptured".into(),
            detail: "the source pod is not captured by any ztunnel: plaintext TCP, no identity"
                .into(),
            waypoint: None,
            workload: workload
                .as_ref()
                .map(|w| format!("{}/{}", w.namespace, w.name)),
            target: workload
                .as_ref()
                .and_then(|w| w.addresses.first())
                .map(|ip| SocketAddr::new(*ip, port)),
        };
        return Ok(finish(
            source,
            destination,
            route,
            None,
            match workload {
                Some(w) => inbound(&nodes, &w, src_ip, None, port)?,
                None => None,
            },
        ));
    };

    let src_workload = src_node
        .snapshot
        .workload_by_ip(src_ip)
        .cloned()
        .ok_or_else(|| {
            anyhow!(
                "pod {} ({src_ip}) is captured but not in its ztunnel's config yet",
                source.pod
            )
        })?;
    let identity = src_workload.identity();
    source.identity = Some(identity.to_string());
    let caller = Caller {
        ip: src_ip,
        identity: &identity,
    };
    let route = outbound::route(&src_node.snapshot, caller, dst.0);
    let (info, hop) = match route {
        Route::Hbone {
            workload,
            service,
            target: t,
        } => (
            RouteInfo {
                kind: "hbone".into(),
                detail: match &service {
                    Some(s) => format!("HBONE (mTLS) to an endpoint of {}, no waypoint", s.key()),
                    None => "HBONE (mTLS) straight to the pod, no waypoint".into(),
                },
                waypoint: None,
                workload: Some(format!("{}/{}", workload.namespace, workload.name)),
                target: Some(t),
            },
            Hop::Inbound(workload, t.port()),
        ),
        Route::Waypoint {
            waypoint,
            service,
            authority,
        } => (
            RouteInfo {
                kind: "waypoint".into(),
                detail: format!(
                    "HBONE to waypoint pod {}/{} ({}), which applies L7 policy and routing",
                    waypoint.workload.namespace, waypoint.workload.name, waypoint.address
                ),
                waypoint: Some(format!(
                    "{}/{}",
                    waypoint.workload.namespace, waypoint.workload.name
                )),
                workload: Some(format!(
                    "{}/{}",
                    waypoint.workload.namespace, waypoint.workload.name
                )),
                target: Some(authority),
            },
            Hop::Waypoint(waypoint.address.ip(), service),
        ),
        Route::Plain {
            workload,
            target: t,
            ..
        } => (
            RouteInfo {
                kind: "plain".into(),
                detail:
                    "plain TCP to a workload outside the mesh (no mTLS, no ztunnel on its side)"
                        .into(),
                waypoint: None,
                workload: Some(format!("{}/{}", workload.namespace, workload.name)),
                target: Some(t),
            },
            Hop::Open,
        ),
        Route::Passthrough { target: t } => (
            RouteInfo {
                kind: "passthrough".into(),
                detail: "the address is unknown to the mesh: passed through as the app dialled it"
                    .into(),
                waypoint: None,
                workload: None,
                target: Some(t),
            },
            Hop::Open,
        ),
        Route::NoEndpoints { service } => (
            RouteInfo {
                kind: "no-endpoints".into(),
                detail: format!("service {} has no healthy endpoint: refused", service.key()),
                waypoint: None,
                workload: None,
                target: None,
            },
            Hop::Refused,
        ),
        Route::WaypointUnavailable {
            destination: d,
            error,
        } => (
            RouteInfo {
                kind: "waypoint-unavailable".into(),
                detail: format!("{d}: {error}: refused"),
                waypoint: None,
                workload: None,
                target: None,
            },
            Hop::Refused,
        ),
    };
    match hop {
        Hop::Inbound(workload, port) => {
            let inbound = inbound(&nodes, &workload, src_ip, Some(&identity), port)?;
            Ok(finish(source, destination, info, None, inbound))
        }
        Hop::Waypoint(ip, service) => {
            let http_info = match &http {
                Some(req) => Some(
                    waypoint_decision(
                        target,
                        ip,
                        service.as_deref(),
                        &identity,
                        src_ip,
                        dst.0,
                        req,
                    )
                    .await?,
                ),
                None => None,
            };
            Ok(finish(source, destination, info, http_info, None))
        }
        Hop::Open | Hop::Refused => Ok(finish(source, destination, info, None, None)),
    }
}

/// Where the connection goes after the source's ztunnel.
enum Hop {
    /// A ztunnel authorizes it for this workload, on this target port.
    Inbound(Arc<Workload>, u16),
    /// The waypoint at this address takes it.
    Waypoint(IpAddr, Option<Arc<Service>>),
    /// Nothing on the way authorizes it.
    Open,
    /// The source's ztunnel refuses it.
    Refused,
}

/// The summary verdict: a refused route, the waypoint's L7 decision, else the destination
/// ztunnel's authorization, else allowed.
fn finish(
    source: Source,
    destination: Destination,
    route: RouteInfo,
    http: Option<HttpInfo>,
    inbound: Option<Inbound>,
) -> Explanation {
    let (allowed, reason) =
        if matches!(route.kind.as_str(), "no-endpoints" | "waypoint-unavailable") {
            (false, route.detail.clone())
        } else if let Some(h) = &http {
            if h.jwt.starts_with("rejected") {
                (false, format!("the waypoint answers 401: JWT {}", h.jwt))
            } else if h.decision != "allowed" {
                let by = h.denied_by.as_deref().unwrap_or("no ALLOW policy matched");
                (
                    false,
                    format!("the waypoint answers 403 (RBAC: access denied): {by}"),
                )
            } else if h.route_choice == "none" {
                (false, "the waypoint answers 404: no route matched".into())
            } else {
                let to = match &h.route {
                    Some(r) => format!("route {r} rule {}", h.rule.unwrap_or(0)),
                    None => "the service's default route".into(),
                };
                (
                    true,
                    format!("the waypoint allows it and routes it by {to}"),
                )
            }
        } else if let Some(i) = &inbound {
            (i.decision.verdict == Verdict::Allow, i.summary.clone())
        } else {
            (true, route.detail.clone())
        };
    Explanation {
        source,
        destination,
        route,
        http,
        inbound,
        verdict: if allowed { "allowed" } else { "denied" }.into(),
        reason,
    }
}

/// The destination ztunnel's authorization of a connection to `workload`'s `port` from
/// `src_ip` with `identity` (`None`: plaintext); `None` when no ztunnel captures `workload`.
fn inbound(
    nodes: &[Node],
    workload: &Workload,
    src_ip: IpAddr,
    identity: Option<&Identity>,
    port: u16,
) -> anyhow::Result<Option<Inbound>> {
    let Some(ip) = workload.addresses.first().copied() else {
        bail!(
            "workload {}/{} has no address",
            workload.namespace,
            workload.name
        );
    };
    let Some(node) = nodes
        .iter()
        .find(|n| n.pods.iter().any(|(_, _, pod_ip)| *pod_ip == ip))
    else {
        return Ok(None);
    };
    // The destination node's own config decides, as its ztunnel would.
    let dst = node.snapshot.workload_by_ip(ip).cloned().ok_or_else(|| {
        anyhow!(
            "workload {}/{} is not in its node's ztunnel config",
            workload.namespace,
            workload.name
        )
    })?;
    let conn = ConnInfo {
        src_ip,
        src_identity: identity.cloned(),
        dst_ip: ip,
        dst_port: port,
    };
    let decision = authorize(&node.snapshot, &dst, &conn);
    let mut summary = format!(
        "{}'s ztunnel: {decision}",
        node.component.node.as_deref().unwrap_or("?")
    );
    if let Some(rule) = decision.rule {
        summary.push_str(&format!(" (rule {rule})"));
    }
    Ok(Some(Inbound {
        node: node.component.node.clone().unwrap_or_default(),
        workload: format!("{}/{}", dst.namespace, dst.name),
        identity: dst.identity().to_string(),
        peer_identity: identity.map(ToString::to_string),
        port,
        policies: policy_matches(&node.snapshot, &dst, &conn),
        decision,
        summary,
    }))
}

/// A request as `--http` describes it.
struct HttpRequest {
    method: http::Method,
    path: String,
    query: Option<String>,
    headers: http::HeaderMap,
}

fn parse_http(args: &ExplainArgs) -> anyhow::Result<Option<HttpRequest>> {
    let Some(mp) = &args.http else {
        if !args.headers.is_empty() {
            bail!("--header needs --http METHOD PATH");
        }
        return Ok(None);
    };
    let [method, path] = mp.as_slice() else {
        bail!("--http takes METHOD PATH");
    };
    let method: http::Method = method
        .parse()
        .with_context(|| format!("--http: {method:?} is not an HTTP method"))?;
    if !path.starts_with('/') {
        bail!("--http: the path {path:?} must start with /");
    }
    let (path, query) = match path.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (path.clone(), None),
    };
    let mut headers = http::HeaderMap::new();
    for h in &args.headers {
        let (k, v) = h
            .split_once('=')
            .ok_or_else(|| anyhow!("--header {h:?}: expected K=V"))?;
        let name: http::HeaderName = k
            .parse()
            .with_context(|| format!("--header {h:?}: {k:?} is not a header name"))?;
        let value: http::HeaderValue = v
            .parse()
            .with_context(|| format!("--header {h:?}: the value is not a header value"))?;
        headers.append(name, value);
    }
    Ok(Some(HttpRequest {
        method,
        path,
        query,
        headers,
    }))
}

/// The waypoint's decision for the request, by the waypoint's own pipeline functions on its
/// own L7 state.
async fn waypoint_decision(
    target: &Target,
    ip: IpAddr,
    service: Option<&Service>,
    identity: &Identity,
    src_ip: IpAddr,
    addr: SocketAddr,
    req: &HttpRequest,
) -> anyhow::Result<HttpInfo> {
    let waypoints = target.waypoints().await?;
    let wp = waypoints
        .iter()
        .find(|w| w.ip == ip)
        .ok_or_else(|| anyhow!("no waypoint pod at {ip} in {}", target.describe()))?;
    let dump = target
        .get_json(wp, target.config_dump_port(), "/config_dump")
        .await?;
    let gateway = dump
        .get("gateway")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("waypoint {}: /config_dump has no gateway", wp.key()))?
        .to_string();
    let (gw_ns, gw_name) = gateway
        .split_once('/')
        .ok_or_else(|| anyhow!("waypoint {}: gateway {gateway:?} is not ns/name", wp.key()))?;
    let l7 = l7_snapshot(&dump).with_context(|| format!("waypoint {}", wp.key()))?;
    let gw = GatewayRef {
        namespace: gw_ns,
        name: gw_name,
    };
    let mut headers = req.headers.clone();
    let authn = jwt::authenticate(
        applicable(gw, service, &l7.authentications, |p| &p.targets),
        &mut headers,
        req.query.as_deref(),
    );
    let verified = match &authn {
        jwt::Outcome::Verified(v) => Some(v.clone()),
        _ => None,
    };
    let jwt_text = match &authn {
        jwt::Outcome::NoToken => "no token".to_string(),
        jwt::Outcome::Verified(v) => format!("verified: {}", v.principal),
        jwt::Outcome::Failed { message, detail } => format!("rejected: {message} ({detail})"),
    };
    // The waypoint takes the request's authority from the Host header, else the tunnel's.
    let host = headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| addr.to_string());
    let principal = identity.principal();
    let attrs = RequestAttrs {
        principal: principal.trim_start_matches("spiffe://"),
        namespace: identity.namespace(),
        source_ip: src_ip,
        method: req.method.as_str(),
        path: &req.path,
        host: &host,
        port: addr.port(),
        headers: &headers,
        auth: verified.as_deref(),
    };
    let policies = l7
        .policies
        .values()
        .filter(|p| {
            applicable(gw, service, &l7.policies, |p| &p.targets).any(|q| std::ptr::eq(q, &***p))
        })
        .map(|p| L7PolicyMatch {
            policy: p.key.clone(),
            action: format!("{:?}", p.action).to_uppercase(),
            matches: p.matches(&attrs),
        })
        .collect();
    let decision = decide(gw, &l7, service, &attrs);
    let service_key = service.map(Service::key);
    let view = RouteView {
        method: &req.method,
        path: &req.path,
        query: req.query.as_deref(),
        headers: &headers,
        port: addr.port(),
    };
    let (route_choice, route, rule, backends) =
        match select_route(&l7, service_key.as_deref(), &view) {
            RouteChoice::Default => ("default", None, None, vec![]),
            RouteChoice::NoMatch => ("none", None, None, vec![]),
            RouteChoice::Matched(r) => (
                "matched",
                Some(r.route_name.clone()),
                Some(r.rule_index),
                r.backends
                    .iter()
                    .map(|b| format!("{}:{} weight {}", b.service, b.port, b.weight))
                    .collect(),
            ),
        };
    let (decision, denied_by) = match decision {
        waypoint::l7::Decision::Allow => ("allowed".to_string(), None),
        waypoint::l7::Decision::Deny(p) => (
            "denied".to_string(),
            Some(match p {
                Some(p) => format!("denied by DENY policy {p}"),
                None => "no ALLOW policy matched".to_string(),
            }),
        ),
    };
    Ok(HttpInfo {
        method: req.method.to_string(),
        path: req.path.clone(),
        gateway,
        jwt: jwt_text,
        policies,
        decision,
        denied_by,
        route_choice: route_choice.into(),
        route,
        rule,
        backends,
    })
}

/// The waypoint's L7 snapshot, rebuilt from the resources its `/config_dump` reports.
fn l7_snapshot(dump: &Value) -> anyhow::Result<Arc<L7Snapshot>> {
    let encoded = dump
        .get("l7Config")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("/config_dump has no l7Config (a waypoint older than this CLI?)"))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .context("l7Config is not base64")?;
    let config =
        <amesh_proto::amesh::l7::v1::LocalL7Config as prost::Message>::decode(bytes.as_slice())
            .context("l7Config is not an amesh.l7.v1.LocalL7Config")?;
    let store = L7Store::default();
    store
        .replace(config)
        .map_err(|e| anyhow!("l7Config: {e}"))?;
    Ok(store.snapshot())
}

/// Every node's ztunnel: its config snapshot and captured pods.
async fn read_nodes(target: &Target) -> anyhow::Result<Vec<Node>> {
    let mut nodes = Vec::new();
    for z in target.ztunnels().await? {
        let dump = target
            .get_json(&z, target.config_dump_port(), "/config_dump")
            .await?;
        let snapshot = snapshot_of(&dump)
            .with_context(|| format!("ztunnel {}: reading its /config_dump", z.key()))?;
        let pods = dump
            .get("pods")
            .and_then(Value::as_array)
            .map(|pods| {
                pods.iter()
                    .filter_map(|p| {
                        Some((
                            p.get("namespace")?.as_str()?.to_string(),
                            p.get("name")?.as_str()?.to_string(),
                            p.get("ip")?.as_str()?.parse().ok()?,
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        nodes.push(Node {
            component: z,
            snapshot,
            pods,
        });
    }
    if nodes.is_empty() {
        bail!("no ztunnel runs in {}", target.describe());
    }
    Ok(nodes)
}

/// A ztunnel's config as the data plane's [`Snapshot`]. The dump holds the local-file format
/// at the top level (or under `config`, in older ztunnels), with what istioctl needs added:
/// services' `endpoints`, and a waypoint `destination` always written as a string.
pub fn snapshot_of(dump: &Value) -> anyhow::Result<Snapshot> {
    let root = if dump.get("workloads").is_some() {
        dump
    } else {
        dump.get("config")
            .ok_or_else(|| anyhow!("no workloads or config in /config_dump"))?
    };
    let mut config = serde_json::Map::new();
    for key in ["workloads", "services", "policies"] {
        let mut items = root.get(key).cloned().unwrap_or(Value::Array(vec![]));
        for item in items.as_array_mut().into_iter().flatten() {
            if let Some(obj) = item.as_object_mut() {
                if key == "services" {
                    obj.remove("endpoints");
                }
                if let Some(dst) = obj
                    .get_mut("waypoint")
                    .and_then(|w| w.get_mut("destination"))
                {
                    normalize_waypoint(dst);
                }
            }
        }
        config.insert(key.into(), items);
    }
    let config: LocalConfig = serde_json::from_value(Value::Object(config))
        .context("the config is not in the local-file format")?;
    let model = config.into_model()?;
    Ok(Snapshot::new(model))
}

/// `"<ns>/<hostname>"` (istioctl's form of a hostname waypoint) back to the file's
/// `{namespace, hostname}`; `"<network>/<ip>"` stays.
fn normalize_waypoint(dst: &mut Value) {
    let Some(s) = dst.as_str() else { return };
    let (left, right) = s.rsplit_once('/').unwrap_or(("", s));
    if right.parse::<IpAddr>().is_err() {
        *dst = serde_json::json!({"namespace": left, "hostname": right});
    }
}

/// An uncaptured pod's namespace and address: from the lab's state, or the mesh's workloads.
fn uncaptured_pod(
    target: &Target,
    snapshot: &Snapshot,
    ns: &str,
    name: &str,
    given: &str,
) -> anyhow::Result<(IpAddr, String)> {
    let any_ns = !given.contains('/');
    if let Some(lab) = target.lab() {
        if let Some(p) = lab
            .pods
            .iter()
            .find(|p| p.name == name && (any_ns || p.namespace == ns))
        {
            return Ok((p.ip.into(), p.namespace.clone()));
        }
    }
    if let Some(w) = snapshot
        .workloads()
        .find(|w| w.name == name && (any_ns || w.namespace == ns))
    {
        if let Some(ip) = w.addresses.first() {
            return Ok((*ip, w.namespace.clone()));
        }
    }
    bail!("pod {given:?} not found in {}", target.describe())
}

/// `HOST:PORT` or `IP:PORT` to the address the app dials, and the service it names.
fn resolve_destination(
    snapshot: &Snapshot,
    given: &str,
    src_ns: &str,
) -> anyhow::Result<(SocketAddr, Option<Arc<Service>>)> {
    if let Ok(addr) = given.parse::<SocketAddr>() {
        return Ok((addr, snapshot.service_by_vip(addr.ip()).cloned()));
    }
    let (host, port) = given
        .rsplit_once(':')
        .ok_or_else(|| anyhow!("destination {given:?}: expected HOST:PORT or IP:PORT"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| anyhow!("destination {given:?}: {port:?} is not a port"))?;
    let host = host.trim_end_matches('.');
    let service = snapshot
        .services()
        .find(|s| {
            s.hostname == host
                || (s.name == host && s.namespace == src_ns)
                || host == format!("{}.{}", s.name, s.namespace)
                || host == format!("{}.{}.svc", s.name, s.namespace)
        })
        .cloned()
        .ok_or_else(|| {
            anyhow!("destination {given:?}: no service named {host:?} (from namespace {src_ns})")
        })?;
    if !service.ports.iter().any(|p| p.service_port == port) {
        let ports: Vec<String> = service
            .ports
            .iter()
            .map(|p| p.service_port.to_string())
            .collect();
        bail!(
            "destination {given:?}: service {} has no port {port} (its ports: {})",
            service.key(),
            ports.join(", ")
        );
    }
    let vip = service.vips.first().ok_or_else(|| {
        anyhow!(
            "destination {given:?}: service {} has no VIP",
            service.key()
        )
    })?;
    Ok((SocketAddr::new(vip.address, port), Some(service)))
}

/// Where an uncaptured pod's plaintext lands: the pod at the address, or for a VIP the first
/// healthy endpoint on the target port.
fn plaintext_target(
    snapshot: &Snapshot,
    dst: SocketAddr,
    service: Option<&Arc<Service>>,
) -> anyhow::Result<(Option<Arc<Workload>>, u16)> {
    let Some(service) = service else {
        return Ok((snapshot.workload_by_ip(dst.ip()).cloned(), dst.port()));
    };
    let endpoint = snapshot
        .endpoints(&service.key())
        .iter()
        .find(|e| e.workload.healthy && !e.workload.addresses.is_empty())
        .ok_or_else(|| anyhow!("service {} has no healthy endpoint", service.key()))?;
    let port = ztunnel::proxy::outbound::target_port(service, endpoint, dst.port());
    Ok((Some(endpoint.workload.clone()), port))
}

/// The human-readable explanation.
pub fn render(e: &Explanation) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Source:      {} ({}){}",
        e.source.pod,
        e.source.ip,
        match (&e.source.identity, &e.source.node) {
            (Some(id), Some(node)) => format!(", captured on {node}, identity {id}"),
            _ => ", not captured (plaintext, no identity)".to_string(),
        }
    );
    let _ = writeln!(
        out,
        "Destination: {} -> {}{}",
        e.destination.given,
        e.destination.address,
        e.destination
            .service
            .as_ref()
            .map(|s| format!(" (service {s})"))
            .unwrap_or_default()
    );
    let _ = writeln!(out, "Route:       {}: {}", e.route.kind, e.route.detail);
    if let Some(w) = &e.route.workload {
        let _ = writeln!(
            out,
            "             reaches {w}{}",
            e.route
                .target
                .map(|t| format!(" at {t}"))
                .unwrap_or_default()
        );
    }
    if let Some(h) = &e.http {
        let _ = writeln!(
            out,
            "HTTP {} {} at waypoint {}:",
            h.method, h.path, h.gateway
        );
        let _ = writeln!(out, "  JWT:       {}", h.jwt);
        for p in &h.policies {
            let _ = writeln!(
                out,
                "  policy     {} {} {}",
                p.policy,
                p.action,
                if p.matches {
                    "matches"
                } else {
                    "does not match"
                }
            );
        }
        let _ = writeln!(
            out,
            "  decision:  {}{}",
            h.decision,
            h.denied_by
                .as_ref()
                .map(|d| format!(" ({d})"))
                .unwrap_or_default()
        );
        match (&h.route, h.route_choice.as_str()) {
            (Some(r), _) => {
                let _ = writeln!(out, "  route:     {r} rule {}", h.rule.unwrap_or(0));
                for b in &h.backends {
                    let _ = writeln!(out, "  backend:   {b}");
                }
            }
            (None, "none") => {
                let _ = writeln!(out, "  route:     none matches (404)");
            }
            _ => {
                let _ = writeln!(
                    out,
                    "  route:     the service's default (no HTTPRoute attaches)"
                );
            }
        }
    }
    if let Some(i) = &e.inbound {
        let _ = writeln!(
            out,
            "Inbound:     {} on {}, identity {}, from {}, target port {}",
            i.workload,
            i.node,
            i.identity,
            i.peer_identity
                .as_deref()
                .unwrap_or("no identity (plaintext)"),
            i.port
        );
        for p in &i.policies {
            let _ = writeln!(
                out,
                "  policy     {} {:?}{} {}",
                p.policy,
                p.action,
                if p.dry_run { " (dry run)" } else { "" },
                match p.rule {
                    Some(r) => format!("matches (rule {r})"),
                    None => "does not match".into(),
                }
            );
        }
    }
    let _ = writeln!(
        out,
        "Verdict:     {}: {}",
        e.verdict.to_uppercase(),
        e.reason
    );
    out
}
