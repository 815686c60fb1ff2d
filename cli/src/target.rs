//! Where the mesh runs and how its components' endpoints are reached: a [`Target`] lists the
//! running controllers, ztunnels and waypoints ([`Component`]s) and GETs their HTTP endpoints.
//!
//! - A lab (`--lab <id>`): the lab's `state.json` says which netns each component runs in; the
//!   CLI connects from inside that netns (the admin port 15000 listens on the pod's loopback,
//!   every other port on the pod's address), as a process in the pod would.
//! - A cluster: the kubeconfig's API server, with its credentials; components are pods found by
//!   their labels, and their ports are reached through the API server's pod proxy
//!   (`/api/v1/namespaces/{ns}/pods/{pod}:{port}/proxy/{path}`), so no port-forward and no
//!   route to the pod network is needed.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;

use crate::args::TargetArgs;

/// The controller's debug port (read-only JSON: version, readiness, xDS clients, CA expiry).
pub const CONTROLLER_DEBUG_PORT: u16 = 15014;
/// A proxy's admin port (`/config_dump`); on a cluster only its stats port is reachable.
pub const ADMIN_PORT: u16 = 15000;
/// A proxy's Prometheus port (`/metrics`, and `/config_dump` read-only).
pub const STATS_PORT: u16 = 15020;
/// A proxy's readiness port (`/healthz/ready`).
pub const READINESS_PORT: u16 = 15021;

/// The label of the controller's pods (deploy/base/controller.yaml).
pub const CONTROLLER_SELECTOR: &str = "app=amesh-controller";
/// The label of ztunnel's DaemonSet pods (deploy/base/ztunnel.yaml).
pub const ZTUNNEL_SELECTOR: &str = "app=ztunnel";
/// The label every waypoint pod the controller deploys carries (deploy/waypoint).
pub const WAYPOINT_SELECTOR: &str = "gateway.istio.io/managed=istio.io-mesh-controller";

/// How long one GET may take in all (connect, request, body).
const GET_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest body a component may answer with (a config dump of a big mesh is a few MiB).
const MAX_BODY: usize = 64 << 20;

/// One running mesh component (a controller, a node's ztunnel, a waypoint).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Component {
    pub kind: ComponentKind,
    pub namespace: String,
    pub pod: String,
    pub node: Option<String>,
    pub ip: IpAddr,
}

impl Component {
    /// `namespace/pod`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.pod)
    }
}

/// What a [`Component`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ComponentKind {
    Controller,
    Ztunnel,
    Waypoint,
}

impl ComponentKind {
    pub fn name(self) -> &'static str {
        match self {
            ComponentKind::Controller => "controller",
            ComponentKind::Ztunnel => "ztunnel",
            ComponentKind::Waypoint => "waypoint",
        }
    }
}

impl std::fmt::Display for ComponentKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where the mesh runs.
pub enum Target {
    Lab(LabTarget),
    Kube(KubeTarget),
}

/// A lab on this machine.
pub struct LabTarget {
    pub state: lab::LabState,
}

/// A Kubernetes cluster.
pub struct KubeTarget {
    pub client: kube::Client,
    /// Where the controller and ztunnels run (`--istio-namespace`).
    pub istio_namespace: String,
}

impl Target {
    /// The lab of `--lab`, else the cluster of the kubeconfig (its `--context`).
    pub async fn open(args: &TargetArgs) -> anyhow::Result<Target> {
        if let Some(id) = &args.lab {
            let id: lab::LabId = id
                .parse()
                .map_err(|e| anyhow!("--lab {id:?} is not a lab id: {e}"))?;
            let state = lab::LabState::load(&id)?;
            return Ok(Target::Lab(LabTarget { state }));
        }
        let options = kube::config::KubeConfigOptions {
            context: args.context.clone(),
            ..Default::default()
        };
        let config = kube::Config::from_kubeconfig(&options).await.context(
            "reading the kubeconfig (KUBECONFIG or ~/.kube/config); use --lab <id> for a lab",
        )?;
        let client = kube::Client::try_from(config).context("making a Kubernetes client")?;
        Ok(Target::Kube(KubeTarget {
            client,
            istio_namespace: args.istio_namespace.clone(),
        }))
    }

    /// The lab's state, when the target is a lab.
    pub fn lab(&self) -> Option<&lab::LabState> {
        match self {
            Target::Lab(l) => Some(&l.state),
            Target::Kube(_) => None,
        }
    }

    /// The running controllers (none where the control plane is not the controller, as a lab
    /// in file mode).
    pub async fn controllers(&self) -> anyhow::Result<Vec<Component>> {
        match self {
            Target::Lab(l) => Ok(l.controllers()),
            Target::Kube(k) => {
                k.pods(
                    ComponentKind::Controller,
                    Some(&k.istio_namespace),
                    CONTROLLER_SELECTOR,
                )
                .await
            }
        }
    }

    /// Each node's ztunnel, sorted by node.
    pub async fn ztunnels(&self) -> anyhow::Result<Vec<Component>> {
        let mut out = match self {
            Target::Lab(l) => l.ztunnels(),
            Target::Kube(k) => {
                k.pods(
                    ComponentKind::Ztunnel,
                    Some(&k.istio_namespace),
                    ZTUNNEL_SELECTOR,
                )
                .await?
            }
        };
        out.sort_by(|a, b| a.node.cmp(&b.node).then(a.pod.cmp(&b.pod)));
        Ok(out)
    }

    /// Every waypoint pod, sorted by namespace and name.
    pub async fn waypoints(&self) -> anyhow::Result<Vec<Component>> {
        let mut out = match self {
            Target::Lab(l) => l.waypoints(),
            Target::Kube(k) => {
                k.pods(ComponentKind::Waypoint, None, WAYPOINT_SELECTOR)
                    .await?
            }
        };
        out.sort_by_key(Component::key);
        Ok(out)
    }

    /// The ztunnel of `node`, or the first node's when `node` is `None`; the error lists the
    /// nodes there are.
    pub async fn ztunnel(&self, node: Option<&str>) -> anyhow::Result<Component> {
        let all = self.ztunnels().await?;
        let names = || {
            all.iter()
                .filter_map(|z| z.node.clone())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match node {
            None => all
                .first()
                .cloned()
                .ok_or_else(|| anyhow!("no ztunnel runs in {}", self.describe())),
            Some(n) => all
                .iter()
                .find(|z| z.node.as_deref() == Some(n))
                .cloned()
                .ok_or_else(|| anyhow!("no ztunnel on node {n:?} (nodes with one: {})", names())),
        }
    }

    /// `lab <id>` or `the cluster`, for messages.
    pub fn describe(&self) -> String {
        match self {
            Target::Lab(l) => format!("lab {}", l.state.id),
            Target::Kube(_) => "the cluster".to_string(),
        }
    }

    /// The port to read a proxy's `/config_dump` on: the admin port in a lab (the CLI runs
    /// beside it, in its netns), the stats port on a cluster (the pod proxy cannot reach the
    /// admin port's loopback; the stats port serves the dump read-only).
    pub fn config_dump_port(&self) -> u16 {
        match self {
            Target::Lab(_) => ADMIN_PORT,
            Target::Kube(_) => STATS_PORT,
        }
    }

    /// GET `path` on the component's `port` (admin 15000, stats 15020, readiness 15021, the
    /// controller's debug port); the body, or an error naming component, port, path and status.
    pub async fn get(&self, c: &Component, port: u16, path: &str) -> anyhow::Result<Vec<u8>> {
        let what = || format!("GET {path} on {} {} port {port}", c.kind, c.key());
        let got = match self {
            Target::Lab(l) => tokio::time::timeout(GET_TIMEOUT, l.get(c, port, path))
                .await
                .map_err(|_| anyhow!("no answer within {GET_TIMEOUT:?}"))
                .and_then(|r| r),
            Target::Kube(k) => k.get(c, port, path).await,
        };
        got.with_context(what)
    }

    /// [`Target::get`], parsed as JSON.
    pub async fn get_json(
        &self,
        c: &Component,
        port: u16,
        path: &str,
    ) -> anyhow::Result<serde_json::Value> {
        let body = self.get(c, port, path).await?;
        serde_json::from_slice(&body).with_context(|| {
            format!(
                "GET {path} on {} {} port {port}: the answer is not JSON",
                c.kind,
                c.key()
            )
        })
    }
}

impl LabTarget {
    fn controllers(&self) -> Vec<Component> {
        let s = &self.state;
        let controller = s
            .mesh
            .as_ref()
            .is_some_and(|m| m.control_plane == lab::mesh_options::ControlPlane::Controller);
        if !controller {
            return Vec::new();
        }
        vec![Component {
            kind: ComponentKind::Controller,
            namespace: LAB_CONTROLLER_NAMESPACE.into(),
            pod: lab::mesh::CONTROLLER.into(),
            node: None,
            ip: s.root_ip.into(),
        }]
    }

    fn ztunnels(&self) -> Vec<Component> {
        (self.state.nodes.iter())
            .filter_map(|n| {
                let z = n.ztunnel.as_ref()?;
                let (namespace, pod) = z.pod.split_once('/').unwrap_or(("istio-system", &z.pod));
                Some(Component {
                    kind: ComponentKind::Ztunnel,
                    namespace: namespace.into(),
                    pod: pod.into(),
                    node: Some(n.name.clone()),
                    ip: z.ip.into(),
                })
            })
            .collect()
    }

    fn waypoints(&self) -> Vec<Component> {
        let s = &self.state;
        (s.waypoints.iter())
            .flat_map(|w| s.pods.iter().filter(|p| w.runs_in(p)))
            .map(|p| Component {
                kind: ComponentKind::Waypoint,
                namespace: p.namespace.clone(),
                pod: p.name.clone(),
                node: Some(p.node.clone()),
                ip: p.ip.into(),
            })
            .collect()
    }

    /// The netns `c` runs in.
    fn netns_of(&self, c: &Component) -> anyhow::Result<String> {
        let s = &self.state;
        let found = match c.kind {
            ComponentKind::Controller => Some(s.root_netns.clone()),
            ComponentKind::Ztunnel => (s.nodes.iter())
                .filter_map(|n| n.ztunnel.as_ref())
                .find(|z| z.pod == c.key())
                .map(|z| z.netns.clone()),
            ComponentKind::Waypoint => (s.pods.iter())
                .find(|p| p.namespace == c.namespace && p.name == c.pod)
                .map(|p| p.netns.clone()),
        };
        found.ok_or_else(|| anyhow!("lab {} has no {} {}", s.id, c.kind, c.key()))
    }

    /// Connects from inside the component's netns (loopback for the admin port, which listens
    /// there only) and GETs `path` over HTTP/1.1.
    async fn get(&self, c: &Component, port: u16, path: &str) -> anyhow::Result<Vec<u8>> {
        let netns = self.netns_of(c)?;
        let ip = if port == ADMIN_PORT {
            IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
        } else {
            c.ip
        };
        let addr = SocketAddr::new(ip, port);
        let stream = tokio::task::spawn_blocking(move || {
            lab::netns::run_in(&netns, move || {
                std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))
            })
        })
        .await
        .context("the connecting thread failed")??
        .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nonblocking(true)?;
        let stream = tokio::net::TcpStream::from_std(stream)?;
        http1_get(stream, &addr.to_string(), path).await
    }
}

/// The namespace the CLI reports the lab's controller in (it runs in the lab's root netns,
/// standing for the controller Deployment's pod).
pub const LAB_CONTROLLER_NAMESPACE: &str = "istio-system";

/// One HTTP/1.1 GET on a connected stream; the body of a 200, else an error with the status
/// and the start of the body.
async fn http1_get(
    stream: tokio::net::TcpStream,
    authority: &str,
    path: &str,
) -> anyhow::Result<Vec<u8>> {
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    let conn = tokio::spawn(conn);
    let req = http::Request::get(path)
        .header(http::header::HOST, authority)
        .body(Empty::<Bytes>::new())
        .with_context(|| format!("{path:?} is not a valid request path"))?;
    let resp = sender.send_request(req).await?;
    let body = success_body(resp, "").await;
    conn.abort();
    body
}

/// The start of a body, for an error message.
/// The body of a successful answer, read up to [`MAX_BODY`]; otherwise an error with the status
/// (`from` says who answered) and the start of the body. One reader for both ways in.
async fn success_body<B>(resp: http::Response<B>, from: &str) -> anyhow::Result<Vec<u8>>
where
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let status = resp.status();
    let body = http_body_util::Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| anyhow!("reading the body: {e}"))?
        .to_bytes();
    if !status.is_success() {
        bail!("status {status}{from}: {}", snippet(&body));
    }
    Ok(body.to_vec())
}

fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(200) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text.to_string(),
    }
}

impl KubeTarget {
    /// The running pods matching `selector` (in `namespace`, or all namespaces), as components.
    async fn pods(
        &self,
        kind: ComponentKind,
        namespace: Option<&str>,
        selector: &str,
    ) -> anyhow::Result<Vec<Component>> {
        use k8s_openapi::api::core::v1::Pod;
        let api: kube::Api<Pod> = match namespace {
            Some(ns) => kube::Api::namespaced(self.client.clone(), ns),
            None => kube::Api::all(self.client.clone()),
        };
        let list = api
            .list(&kube::api::ListParams::default().labels(selector))
            .await
            .with_context(|| {
                format!(
                    "listing {kind} pods ({selector}) in {}",
                    namespace.unwrap_or("all namespaces")
                )
            })?;
        let mut out = Vec::new();
        for pod in list.items {
            let meta = &pod.metadata;
            let status = pod.status.as_ref();
            let ip = status.and_then(|s| s.pod_ip.as_deref());
            // A pod without an address (pending, or gone) has no endpoint to ask.
            let Some(ip) = ip.and_then(|ip| ip.parse().ok()) else {
                continue;
            };
            out.push(Component {
                kind,
                namespace: meta.namespace.clone().unwrap_or_default(),
                pod: meta.name.clone().unwrap_or_default(),
                node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
                ip,
            });
        }
        Ok(out)
    }

    /// GET through the API server's pod proxy.
    async fn get(&self, c: &Component, port: u16, path: &str) -> anyhow::Result<Vec<u8>> {
        let path = path.strip_prefix('/').unwrap_or(path);
        let uri = format!(
            "/api/v1/namespaces/{}/pods/{}:{port}/proxy/{path}",
            c.namespace, c.pod
        );
        let req = http::Request::get(&uri)
            .body(Vec::new())
            .with_context(|| format!("{uri:?} is not a valid request path"))?;
        let fut = self.client.send(req.map(kube::client::Body::from));
        let resp = tokio::time::timeout(GET_TIMEOUT, fut)
            .await
            .map_err(|_| anyhow!("no answer within {GET_TIMEOUT:?}"))?
            .with_context(|| format!("GET {uri}"))?;
        success_body(resp, " from the pod proxy").await
    }
}
