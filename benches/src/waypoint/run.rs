//! One run: the lab up (five client → server pairs; amesh's waypoint, which also serves a
//! second namespace whose service has Istio traffic policies in place, and a second waypoint
//! Gateway whose process is swapped for Envoy), a check that each path goes where it claims,
//! then every (protocol, concurrency) point on every path, repeated with the paths' order
//! rotating, reading the proxies' CPU time around each measured window and their RSS after it.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context};
use lab::mesh::MeshOptions;
use lab::{Lab, LabOptions};
use serde::Serialize;

use crate::envoy::{self, EnvoySetup};
use crate::host::{self, cpu_split, status_fields_kib};
use crate::load::{self, Load, LoadRun, Proto};
use crate::Settings;

/// The echo app's port in every pod (HTTP/1.1 and h2c).
const APP_PORT: u16 = 8080;
/// Namespace and Gateway of amesh's waypoint, and of the one Envoy replaces.
const AMESH: &str = "waypoint";
const ENVOY: &str = "envoy";
/// Namespace whose service has a VirtualService and a DestinationRule; its waypoint is
/// `AMESH`'s.
const POLICIES: &str = "policies";

/// Which path a request takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PathKind {
    /// Pod to pod, no mesh.
    Direct,
    /// Client ztunnel → server ztunnel (HBONE), no waypoint.
    Ztunnel,
    /// Client ztunnel → amesh's waypoint → server ztunnel.
    Waypoint,
    /// Client ztunnel → Envoy → server ztunnel.
    Envoy,
    /// As `Waypoint`, through the same amesh waypoint, to a service with a VirtualService
    /// (retries, timeout, two weighted subsets) and a DestinationRule (least request, outlier
    /// detection, pool limits) that the load never triggers.
    Policies,
}

impl PathKind {
    pub const ALL: [PathKind; 5] = [
        PathKind::Direct,
        PathKind::Ztunnel,
        PathKind::Waypoint,
        PathKind::Envoy,
        PathKind::Policies,
    ];

    /// The fixture's namespace of the path.
    fn namespace(self) -> &'static str {
        match self {
            PathKind::Direct => "direct",
            PathKind::Ztunnel => "mesh",
            PathKind::Waypoint => AMESH,
            PathKind::Envoy => ENVOY,
            PathKind::Policies => POLICIES,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            PathKind::Direct => "direct (no mesh)",
            PathKind::Ztunnel => "ztunnel only",
            PathKind::Waypoint => "ztunnel + amesh waypoint",
            PathKind::Envoy => "ztunnel + Envoy waypoint",
            PathKind::Policies => "ztunnel + amesh waypoint + VS/DR",
        }
    }
}

/// Where a path's client sends.
struct Target {
    kind: PathKind,
    client: String,
    addr: SocketAddr,
    authority: String,
}

/// One measured point.
#[derive(Clone, Debug, Serialize)]
pub struct Point {
    pub rep: usize,
    pub path: PathKind,
    pub proto: Proto,
    pub concurrency: usize,
    pub load: LoadRun,
    /// CPU seconds in the measured window: amesh's waypoint, Envoy, each ztunnel (node
    /// order).
    pub waypoint_cpu_s: f64,
    pub envoy_cpu_s: f64,
    pub ztunnel_cpu_s: Vec<f64>,
    /// RSS right after the window (connections still open, pools warm).
    pub waypoint_rss_kib: u64,
    pub envoy_rss_kib: u64,
}

/// Memory of one proxy outside the points.
#[derive(Clone, Debug, Serialize)]
pub struct ProxyMemory {
    pub pid: i32,
    pub rss_idle_kib: u64,
    pub rss_after_kib: u64,
    pub rss_peak_kib: u64,
}

/// Everything a run measured.
#[derive(Debug, Serialize)]
pub struct Measured {
    pub envoy_version: String,
    pub waypoint: ProxyMemory,
    pub envoy: ProxyMemory,
    pub points: Vec<Point>,
}

/// Processes whose CPU is read around each window.
struct Pids {
    waypoint: i32,
    envoy: i32,
    ztunnels: Vec<i32>,
}

impl Pids {
    fn cpu(&self) -> anyhow::Result<Vec<f64>> {
        [self.waypoint, self.envoy]
            .into_iter()
            .chain(self.ztunnels.iter().copied())
            .map(|pid| cpu_split(pid).map(|c| c.total()))
            .collect()
    }
}

fn rss(pid: i32) -> anyhow::Result<u64> {
    status_fields_kib(pid, ["VmRSS:"]).map(|[r]| r)
}

fn memory(pid: i32, idle: u64) -> anyhow::Result<ProxyMemory> {
    let [rss_after_kib, rss_peak_kib] = status_fields_kib(pid, ["VmRSS:", "VmHWM:"])?;
    Ok(ProxyMemory {
        pid,
        rss_idle_kib: idle,
        rss_after_kib,
        rss_peak_kib,
    })
}

fn progress(msg: &str) {
    eprintln!("amesh-bench-waypoint: {msg}");
}

pub fn run(settings: &Settings) -> anyhow::Result<Measured> {
    let envoy_bin = envoy::find_binary()?;
    let envoy_version = envoy::version(&envoy_bin);
    progress(&format!(
        "bringing up the lab (2 nodes, 2 waypoints); {envoy_version}"
    ));
    let binary = std::env::current_exe().context("cannot find the amesh-bench-waypoint binary")?;
    let options = LabOptions {
        mesh: Some(MeshOptions {
            control_plane: settings.control_plane,
            ..MeshOptions::beside(&binary)
        }),
        binary: Some(binary),
        startup_timeout: Duration::from_secs(30),
        ..LabOptions::default()
    };
    let mut lab = Lab::up(&settings.fixture, 2, options).context("bringing the lab up")?;
    let result = measure(&mut lab, settings, &envoy_bin, envoy_version);
    progress("tearing the lab down");
    let down = lab.down().context("tearing the lab down");
    let measured = result?;
    down?;
    Ok(measured)
}

fn measure(
    lab: &mut Lab,
    settings: &Settings,
    envoy_bin: &std::path::Path,
    envoy_version: String,
) -> anyhow::Result<Measured> {
    let envoy = swap_in_envoy(lab, envoy_bin)?;
    let waypoint_pid = process_pid(lab, &lab::waypoints::process_name(AMESH, AMESH))?;
    let ztunnels = (lab.state().nodes.iter())
        .map(|n| process_pid(lab, &lab::mesh::ztunnel_name(&n.name)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let pids = Pids {
        waypoint: waypoint_pid,
        envoy: envoy.pid,
        ztunnels,
    };
    let targets = targets(lab)?;
    check_paths(lab, &targets)
        .with_context(|| format!("Envoy's log ends with:\n{}", log_tail(&envoy.log)))?;
    std::thread::sleep(Duration::from_secs(1));
    let idle = (rss(pids.waypoint)?, rss(pids.envoy)?);

    let mut points = Vec::new();
    for rep in 0..settings.repetitions {
        progress(&format!("repetition {}/{}", rep + 1, settings.repetitions));
        for proto in [Proto::Http1, Proto::Http2] {
            for &concurrency in &settings.concurrency {
                let mut order: Vec<&Target> = targets.iter().collect();
                let n = order.len();
                order.rotate_left(rep % n);
                for t in order {
                    let p = point(lab, settings, &pids, t, proto, concurrency, rep)?;
                    progress(&format!(
                        "  {:8} x{:<3} {:32} {:8.0} req/s  p50 {:6.0} µs  p99 {:6.0} µs",
                        proto.name(),
                        concurrency,
                        t.kind.label(),
                        p.load.requests_per_s,
                        p.load.p50_us,
                        p.load.p99_us
                    ));
                    points.push(p);
                }
            }
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    Ok(Measured {
        envoy_version,
        waypoint: memory(pids.waypoint, idle.0)?,
        envoy: memory(pids.envoy, idle.1)?,
        points,
    })
}

fn point(
    lab: &Lab,
    settings: &Settings,
    pids: &Pids,
    t: &Target,
    proto: Proto,
    concurrency: usize,
    rep: usize,
) -> anyhow::Result<Point> {
    let load = Load {
        proto,
        concurrency,
        addr: t.addr,
        authority: t.authority.clone(),
        body_size: settings.body_size,
        warmup: settings.warmup,
        window: settings.window,
        max_requests: settings.max_requests,
    };
    let (run, before, after) = lab
        .run_in_pod(&t.client, || load::run(&load, || pids.cpu()))?
        .with_context(|| format!("{} x{concurrency}, {}", proto.name(), t.kind.label()))?;
    let d: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    Ok(Point {
        rep,
        path: t.kind,
        proto,
        concurrency,
        load: run,
        waypoint_cpu_s: d[0],
        envoy_cpu_s: d[1],
        ztunnel_cpu_s: d[2..].to_vec(),
        waypoint_rss_kib: rss(pids.waypoint)?,
        envoy_rss_kib: rss(pids.envoy)?,
    })
}

fn process_pid(lab: &Lab, name: &str) -> anyhow::Result<i32> {
    (lab.state().processes.iter().rev())
        .find(|p| p.name == name)
        .map(|p| p.pid)
        .with_context(|| format!("no process record for {name}"))
}

/// Replaces the lab's `waypoint` process of Gateway `envoy/envoy` with Envoy in the same pod
/// (same IP, same identity), marks the pod Ready again and waits until every ztunnel knows.
fn swap_in_envoy(
    lab: &mut Lab,
    envoy_bin: &std::path::Path,
) -> anyhow::Result<lab::process::ProcessRecord> {
    let pod = lab::waypoints::pod(lab.state(), ENVOY, ENVOY)?;
    let server = lab.pod(&format!("{ENVOY}/server"))?.clone();
    let setup = EnvoySetup {
        dir: lab.run_dir().join("envoy"),
        ca_dir: lab::mesh::ca_dir(lab.state()),
        namespace: ENVOY.into(),
        service_account: pod.service_account.clone(),
        hosts: service_hosts(ENVOY),
        server_ip: server.ip,
        server_port: APP_PORT,
        server_service_account: server.service_account.clone(),
    };
    let config = envoy::write_files(&setup)?;
    lab::waypoints::kill(lab, ENVOY, ENVOY)?;
    let name = format!("envoy {}", pod.key());
    let record = lab.spawn(&name, &pod.netns, envoy::command(envoy_bin, &config))?;
    let ip = pod.ip;
    lab.run_in_pod(&pod.key(), || {
        envoy::wait_listening(ip, 15008, Duration::from_secs(15))
    })?
    .with_context(|| format!("Envoy's log ends with:\n{}", log_tail(&record.log)))?;
    lab.set_pod_ready(&pod.key(), true)?;
    lab::hooks::on_lab_ready(lab)?;
    Ok(record)
}

/// The last lines of a log file (the lab removes its run folder when it goes down).
fn log_tail(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// The names a client may call the fixture's Service `server` of `namespace` by.
fn service_hosts(namespace: &str) -> Vec<String> {
    let long = format!("server.{namespace}.svc.cluster.local");
    let short = format!("server.{namespace}");
    [long, short]
        .into_iter()
        .flat_map(|h| [format!("{h}:{APP_PORT}"), h])
        .collect()
}

fn targets(lab: &Lab) -> anyhow::Result<Vec<Target>> {
    PathKind::ALL
        .iter()
        .map(|&kind| {
            let ns = kind.namespace();
            let (ip, authority): (IpAddr, String) = if kind == PathKind::Direct {
                let server = lab.pod(&format!("{ns}/server"))?;
                (server.ip.into(), format!("{}:{APP_PORT}", server.ip))
            } else {
                let svc = (lab.state().services.iter())
                    .find(|s| s.namespace == ns && s.name == "server")
                    .with_context(|| format!("no Service {ns}/server in the lab"))?;
                let vip = svc
                    .vip
                    .with_context(|| format!("Service {ns}/server has no VIP"))?;
                (vip.into(), service_hosts(ns)[0].clone())
            };
            Ok(Target {
                kind,
                client: format!("{ns}/client"),
                addr: SocketAddr::new(ip, APP_PORT),
                authority,
            })
        })
        .collect()
}

/// A few requests on every path (retried while the ztunnels take in the Envoy pod's return to
/// Ready), then proof that the waypoint paths went through their proxy and the others did not:
/// amesh's waypoint counted requests for its Service only, Envoy routed upstream requests.
fn check_paths(lab: &Lab, targets: &[Target]) -> anyhow::Result<()> {
    let envoy_before = envoy_upstream_requests(lab)?;
    for t in targets {
        let load = Load {
            proto: Proto::Http1,
            concurrency: 2,
            addr: t.addr,
            authority: t.authority.clone(),
            body_size: 1024,
            warmup: Duration::ZERO,
            window: Duration::from_secs(5),
            max_requests: 20,
        };
        let mut last = None;
        for _ in 0..20 {
            match lab.run_in_pod(&t.client, || load::run(&load, || Ok(())))? {
                Ok((r, ..)) if r.requests == load.max_requests => {
                    last = None;
                    break;
                }
                Ok((r, ..)) => last = Some(anyhow::anyhow!("{} requests of 20", r.requests)),
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        if let Some(e) = last {
            return Err(e.context(format!("the {} path does not answer", t.kind.label())));
        }
    }
    let envoy_after = envoy_upstream_requests(lab)?;
    if envoy_after < envoy_before + 20 {
        let pod = lab::waypoints::pod(lab.state(), ENVOY, ENVOY)?;
        let stats = http_get(
            lab,
            &pod.key(),
            ([127, 0, 0, 1], envoy::ADMIN_PORT).into(),
            "/stats?filter=(rq_total|cx_total|_rq_|ssl)",
        )
        .unwrap_or_default();
        bail!(
            "Envoy routed {} requests upstream, expected at least 20: the Envoy path does not go through it; its counters:\n{stats}",
            envoy_after - envoy_before
        );
    }
    let pod = lab::waypoints::pod(lab.state(), AMESH, AMESH)?;
    let metrics = http_get(
        lab,
        &pod.key(),
        (pod.ip, lab::cluster::waypoint::METRICS_PORT).into(),
        "/metrics",
    )?;
    let counted = |ns: &str| {
        metrics.lines().any(|l| {
            l.starts_with("istio_requests_total{")
                && l.contains(&format!("server.{ns}.svc.cluster.local"))
        })
    };
    if !counted(AMESH) {
        bail!("amesh's waypoint counted no request for server.{AMESH}: the waypoint path does not go through it");
    }
    if counted("mesh") || counted(ENVOY) {
        bail!("amesh's waypoint counted requests of another path");
    }
    // The policies path: the same waypoint routed it by the VirtualService.
    let routed = metrics.lines().any(|l| {
        l.starts_with("amesh_waypoint_route_requests_total{")
            && l.contains("route=\"policies/server\"")
    });
    if !routed {
        bail!("amesh's waypoint routed nothing by VirtualService policies/server: it is not in force; its metrics:\n{metrics}");
    }
    Ok(())
}

/// Envoy's count of requests sent to the server (admin `/stats`).
fn envoy_upstream_requests(lab: &Lab) -> anyhow::Result<u64> {
    let pod = lab::waypoints::pod(lab.state(), ENVOY, ENVOY)?;
    let stats = http_get(
        lab,
        &pod.key(),
        ([127, 0, 0, 1], envoy::ADMIN_PORT).into(),
        "/stats?filter=cluster.server_http.upstream_rq_total",
    )?;
    Ok(stats
        .lines()
        .find_map(|l| l.strip_prefix("cluster.server_http.upstream_rq_total: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0))
}

/// A plain HTTP GET from inside `pod` (one connection, closed by the server); the body.
fn http_get(lab: &Lab, pod: &str, addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    lab.run_in_pod(pod, || -> anyhow::Result<String> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        // HTTP/1.1: Envoy's admin answers 1.0 with 426 Upgrade Required.
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default())
    })?
    .with_context(|| format!("GET http://{addr}{path} from {pod}"))
}

/// The machine, for the report.
pub fn machine(load_start: String) -> host::Machine {
    host::machine(load_start)
}
