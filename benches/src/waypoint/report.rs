//! Medians per (protocol, concurrency, path), the targets checked in the same run, a
//! markdown table and the JSON.

use std::fmt::Write;

use serde::Serialize;

use crate::host::Machine;
use crate::load::Proto;
use crate::run::{Measured, PathKind, Point, ProxyMemory};
use crate::stats::median;
use crate::Settings;

/// How the peer is set up, printed with the results.
pub const PEER: &str =
    "Envoy as Istio's waypoint: the `envoy` Gateway's pod runs Envoy instead of amesh's \
waypoint (same pod, IP and SPIFFE identity, certificate issued by the lab's CA); it terminates \
HBONE (TLS 1.3 with client certificates checked against the mesh root, HTTP/2 CONNECT), routes \
HTTP on the Service's host in an internal listener, and sends each upstream connection in an \
HBONE CONNECT (mTLS, server identity checked) to the server's ztunnel. Both proxies run one \
worker thread.";

pub const NOTES: &[&str] = &[
    "Each point: a warm-up (connections, tunnels, pools), then a measured window; medians over the repetitions; paths interleaved, rotating which goes first.",
    "HTTP/1.1: one kept-alive connection per request in flight. HTTP/2 (h2c from the client): one connection with that many concurrent streams. Each request is GET /bytes/1024 (1 KiB body).",
    "CPU: utime+stime of the process over the measured window, per 1,000 requests completed in it; 1 CPU s per 1,000 requests is 1 vCPU at 1,000 requests/s. ztunnels: both nodes' ztunnels together.",
    "Proxy RSS: VmRSS right after each window (its connections still open), median over repetitions.",
    "Added p50: the path's p50 minus the ztunnel-only path's p50 at the same point.",
    "Memory per 1,000 requests/s: the proxy's RSS (MB = 10^6 bytes) divided by its requests/s in thousands.",
    "The lab schedules the waypoint pods on the nodes round robin; every path is client ztunnel (node1) -> proxy -> server ztunnel (node2) either way, the veth hops differ only in which node's bridge they cross.",
    "VS/DR path: through the same amesh waypoint process (namespace label istio.io/use-waypoint-namespace), to a service that has a VirtualService (timeout, 3 retries on 5xx/reset/connect-failure, 50/50 over two subsets) and a DestinationRule (least request, outlier detection, connection pool limits far above the load); one server pod as on the other paths (both subsets select it, by different labels), so the difference is the policies' work. Its targets compare it with the bare waypoint path in the same run: the cost of policies that are configured but never triggered.",
];

/// One line of the results table.
#[derive(Debug, Serialize)]
pub struct Row {
    pub proto: Proto,
    pub concurrency: usize,
    pub path: PathKind,
    pub requests_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Both ztunnels, CPU s per 1,000 requests.
    pub ztunnels_cpu_per_1k: f64,
    /// The waypoint of the path (amesh or Envoy), CPU s per 1,000 requests.
    pub proxy_cpu_per_1k: Option<f64>,
    pub proxy_rss_mib: Option<f64>,
}

/// One target at one point.
#[derive(Debug, Serialize)]
pub struct TargetCheck {
    pub proto: Proto,
    pub concurrency: usize,
    pub target: &'static str,
    pub amesh: f64,
    /// Envoy's figure, the bare waypoint's (policies targets), or the absolute bound.
    pub reference: f64,
    pub met: bool,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub settings: Settings,
    pub peer: &'static str,
    pub envoy_version: String,
    pub rows: Vec<Row>,
    pub targets: Vec<TargetCheck>,
    pub waypoint_memory: ProxyMemory,
    pub envoy_memory: ProxyMemory,
    pub points: Vec<Point>,
    pub notes: Vec<&'static str>,
}

pub fn build(machine: Machine, settings: Settings, m: Measured) -> Report {
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    for proto in [Proto::Http1, Proto::Http2] {
        for &concurrency in &settings.concurrency {
            let at = |path: PathKind| -> Vec<&Point> {
                (m.points.iter())
                    .filter(|p| p.proto == proto && p.concurrency == concurrency && p.path == path)
                    .collect()
            };
            for path in PathKind::ALL {
                let ps = at(path);
                if ps.is_empty() {
                    continue;
                }
                rows.push(row(proto, concurrency, path, &ps));
            }
            let find = |path| {
                (rows.iter()).find(|r: &&Row| {
                    r.proto == proto && r.concurrency == concurrency && r.path == path
                })
            };
            if let (Some(z), Some(w), Some(e)) = (
                find(PathKind::Ztunnel),
                find(PathKind::Waypoint),
                find(PathKind::Envoy),
            ) {
                let mut check = |target, amesh: f64, reference: f64, met: bool| {
                    targets.push(TargetCheck {
                        proto,
                        concurrency,
                        target,
                        amesh,
                        reference,
                        met,
                    })
                };
                let (wc, ec) = (
                    w.proxy_cpu_per_1k.unwrap_or(f64::NAN),
                    e.proxy_cpu_per_1k.unwrap_or(f64::NAN),
                );
                let (wr, er) = (
                    w.proxy_rss_mib.unwrap_or(f64::NAN),
                    e.proxy_rss_mib.unwrap_or(f64::NAN),
                );
                check(
                    "CPU per request ≤ ½ Envoy's (CPU s / 1k req)",
                    wc,
                    ec,
                    wc <= ec / 2.0,
                );
                check("RSS ≤ ⅓ Envoy's (MiB)", wr, er, wr <= er / 3.0);
                if let Some(pl) = find(PathKind::Policies) {
                    let pc = pl.proxy_cpu_per_1k.unwrap_or(f64::NAN);
                    check(
                        "policies not triggered: req/s ≥ 90 % of the bare waypoint's",
                        pl.requests_per_s,
                        w.requests_per_s,
                        pl.requests_per_s >= 0.9 * w.requests_per_s,
                    );
                    check(
                        "policies not triggered: CPU per request ≤ 110 % of the bare waypoint's",
                        pc,
                        wc,
                        pc <= 1.1 * wc,
                    );
                }
                let (wa, ea) = (w.p50_us - z.p50_us, e.p50_us - z.p50_us);
                check("added p50 ≤ Envoy's (µs)", wa, ea, wa <= ea);
                check("CPU ≤ 0.05 vCPU per 1,000 req/s", wc, 0.05, wc <= 0.05);
                let mb_per_krps = wr * 1.048_576 / (w.requests_per_s / 1000.0);
                check(
                    "RSS ≤ 20 MB per 1,000 req/s",
                    mb_per_krps,
                    20.0,
                    mb_per_krps <= 20.0,
                );
            }
        }
    }
    Report {
        machine,
        settings,
        peer: PEER,
        envoy_version: m.envoy_version,
        rows,
        targets,
        waypoint_memory: m.waypoint,
        envoy_memory: m.envoy,
        points: m.points,
        notes: NOTES.to_vec(),
    }
}

fn row(proto: Proto, concurrency: usize, path: PathKind, ps: &[&Point]) -> Row {
    let med = |f: &dyn Fn(&Point) -> f64| median(ps.iter().map(|p| f(p)));
    let per_1k = |cpu: &dyn Fn(&Point) -> f64| {
        med(&|p: &Point| cpu(p) / (p.load.requests.max(1) as f64) * 1000.0)
    };
    let proxy_cpu: Option<&dyn Fn(&Point) -> f64> = match path {
        PathKind::Waypoint => Some(&|p: &Point| p.waypoint_cpu_s),
        PathKind::Envoy => Some(&|p: &Point| p.envoy_cpu_s),
        PathKind::Policies => Some(&|p: &Point| p.waypoint_cpu_s),
        _ => None,
    };
    let proxy_rss: Option<&dyn Fn(&Point) -> f64> = match path {
        PathKind::Waypoint => Some(&|p: &Point| p.waypoint_rss_kib as f64 / 1024.0),
        PathKind::Envoy => Some(&|p: &Point| p.envoy_rss_kib as f64 / 1024.0),
        PathKind::Policies => Some(&|p: &Point| p.waypoint_rss_kib as f64 / 1024.0),
        _ => None,
    };
    Row {
        proto,
        concurrency,
        path,
        requests_per_s: med(&|p| p.load.requests_per_s),
        p50_us: med(&|p| p.load.p50_us),
        p99_us: med(&|p| p.load.p99_us),
        ztunnels_cpu_per_1k: per_1k(&|p| p.ztunnel_cpu_s.iter().sum()),
        proxy_cpu_per_1k: proxy_cpu.map(|f| per_1k(f)),
        proxy_rss_mib: proxy_rss.map(|f| med(f)),
    }
}

/// The markdown the bench prints.
pub fn markdown(r: &Report) -> String {
    let s = &r.settings;
    let m = &r.machine;
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "## amesh waypoint benchmark: amesh waypoint vs {}, {} control plane\n",
        r.envoy_version,
        s.control_plane.name()
    );
    let _ = writeln!(out, "Peer: {}\n", r.peer);
    let _ = writeln!(
        out,
        "{} run, medians of {} repetition(s); {:.1} s warm-up + {:.1} s measured per point; {} B responses; {} CPUs ({}), kernel {}, {}, {} build; load average {} at start, {} at end.\n",
        s.mode, s.repetitions, s.warmup.as_secs_f64(), s.window.as_secs_f64(), s.body_size,
        m.nproc, m.cpu, m.kernel, m.date, m.build, m.load_average_start, m.load_average_end
    );
    let _ = writeln!(
        out,
        "| protocol | in flight | path | req/s | p50 (µs) | p99 (µs) | ztunnels CPU s / 1k req | proxy CPU s / 1k req | proxy RSS (MiB) |"
    );
    let _ = writeln!(out, "|---|---:|---|---:|---:|---:|---:|---:|---:|");
    let opt = |v: Option<f64>, digits: usize| {
        v.map(|v| format!("{v:.digits$}"))
            .unwrap_or_else(|| "–".into())
    };
    for row in &r.rows {
        let zt = if row.path == PathKind::Direct {
            "–".to_string()
        } else {
            format!("{:.3}", row.ztunnels_cpu_per_1k)
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.0} | {:.0} | {:.0} | {} | {} | {} |",
            row.proto.name(),
            row.concurrency,
            row.path.label(),
            row.requests_per_s,
            row.p50_us,
            row.p99_us,
            zt,
            opt(row.proxy_cpu_per_1k, 3),
            opt(row.proxy_rss_mib, 1),
        );
    }
    let _ = writeln!(
        out,
        "\n| protocol | in flight | target | amesh | Envoy, bare waypoint or bound | met |"
    );
    let _ = writeln!(out, "|---|---:|---|---:|---:|---|");
    for t in &r.targets {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.3} | {:.3} | {} |",
            t.proto.name(),
            t.concurrency,
            t.target,
            t.amesh,
            t.reference,
            if t.met { "yes" } else { "**no**" }
        );
    }
    let met = r.targets.iter().filter(|t| t.met).count();
    let _ = writeln!(out, "\n{met} of {} target checks met.\n", r.targets.len());
    let mib = |k: u64| format!("{:.1}", k as f64 / 1024.0);
    let _ = writeln!(out, "| proxy memory (MiB) | amesh waypoint | Envoy |");
    let _ = writeln!(out, "|---|---:|---:|");
    let (w, e) = (&r.waypoint_memory, &r.envoy_memory);
    let _ = writeln!(
        out,
        "| RSS idle, before the points | {} | {} |",
        mib(w.rss_idle_kib),
        mib(e.rss_idle_kib)
    );
    let _ = writeln!(
        out,
        "| RSS after the run | {} | {} |",
        mib(w.rss_after_kib),
        mib(e.rss_after_kib)
    );
    let _ = writeln!(
        out,
        "| RSS peak (VmHWM) | {} | {} |\n",
        mib(w.rss_peak_kib),
        mib(e.rss_peak_kib)
    );
    for n in &r.notes {
        let _ = writeln!(out, "- {n}");
    }
    out
}
