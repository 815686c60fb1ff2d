//! The pair layout's results: every path against direct in one table (ratios for rates, added
//! microseconds for times), the ztunnels' memory and CPU, and issue #19's targets each marked
//! met or not; rendered as markdown and serialised as JSON.

use std::fmt::Write;

use serde::Serialize;

use crate::report::{
    connection_failures, machine_table, num, ztunnel_table, Machine, MachineCpu, PathRuns, Row,
    ZtunnelCost,
};
use crate::settings::Settings;

/// One measured path other than direct, and how it compares with direct.
#[derive(Debug, Serialize)]
pub struct PairPath {
    pub name: &'static str,
    pub label: &'static str,
    /// Rows with `direct` = the direct path and `mesh` = this path.
    pub summary: Vec<Row>,
    /// CPU seconds of each ztunnel (client side first) per GB this path's throughput runs
    /// delivered.
    pub ztunnel_cpu_secs_per_gb: Vec<f64>,
    /// The part of each ztunnel's CPU spent in the kernel (system time over user + system);
    /// None for a ztunnel that hardly ran on this path.
    pub ztunnel_kernel_share: Vec<Option<f64>>,
    /// The whole machine during this path's throughput runs.
    pub machine: MachineCpu,
    /// Every run of this path.
    pub runs: PathRuns,
}

#[derive(Debug, Serialize)]
pub struct PairReport {
    pub layout: &'static str,
    pub machine: Machine,
    pub settings: Settings,
    pub paths: Vec<PairPath>,
    /// Client side first; CPU over the HBONE throughput runs (pinned and unpinned).
    pub ztunnel: Vec<ZtunnelCost>,
    pub hbone_throughput_bytes: u64,
    /// The whole machine during the direct path's throughput runs.
    pub direct_machine: MachineCpu,
    pub targets: Vec<Target>,
    /// Every run of the direct path (the others' are in `paths`).
    pub direct: PathRuns,
    pub notes: Vec<&'static str>,
}

/// One of issue #19's targets for this layout.
#[derive(Debug, Serialize)]
pub struct Target {
    pub what: String,
    pub measured: String,
    pub met: bool,
    /// Throughput targets: the throughput this machine's CPUs could carry at the path's
    /// measured CPU per GB, in the target's unit (× direct), and the same with ztunnel's
    /// user space free. A bound under the target says no ztunnel code change reaches it here.
    pub cpu_ceiling: Option<f64>,
    pub cpu_ceiling_kernel_only: Option<f64>,
}

pub const NOTES: &[&str] = &[
    "Layout: two network namespaces joined by a veth; one ztunnel each in dedicated mode (PROXY_MODE=dedicated, local config and CA); the client namespace's TCP to the meshed server addresses is redirected to its ztunnel's 15001 by nft (ztunnel's own sockets, mark 0x539, skipped). The apps (load servers and clients) are the bench's threads in the two namespaces.",
    "direct: the same apps through an address the rule does not capture. hbone: the destination workload speaks HBONE (through both ztunnels). passthrough: the destination workload has no HBONE; the client ztunnel relays plain TCP to the app.",
    "pinned: each ztunnel's threads on one core (client side CPU 0, server side CPU 1), apps unpinned; unpinned: the scheduler places every thread.",
    "Throughput counts the bytes the sink received; latency is a 1 KiB request and response on one kept connection; connection setup is connect + 1-byte echo + close. Cells: the path's median, then its ratio to direct (rates) or what it adds to direct (times).",
    "ztunnel memory: idle before any traffic; held connections over the hbone path; after the run 3 s after the last measurement. CPU per GB: utime+stime during the hbone throughput runs over the bytes they delivered.",
crate::report::MACHINE_CPU_NOTE,
];

/// The markdown the bench prints.
pub fn markdown(r: &PairReport) -> String {
    let s = &r.settings;
    let m = &r.machine;
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "## amesh dedicated-pair benchmark: ztunnel paths vs direct\n"
    );
    let workers = s
        .workers
        .map_or("ztunnel's default".to_string(), |n| n.to_string());
    let _ = writeln!(
        out,
        "{} run, medians of {} repetition(s); {} s per throughput run; ztunnel worker threads: {workers}; {} CPUs ({}), kernel {}, {}, {} build; load average {} at start, {} at end.\n",
        s.mode, s.repetitions, s.throughput_secs, m.nproc, m.cpu, m.kernel, m.date, m.build,
        m.load_average_start, m.load_average_end
    );
    let _ = write!(out, "| measurement | direct |");
    for p in &r.paths {
        let _ = write!(out, " {} |", p.label);
    }
    let _ = writeln!(out, "\n|---|---:|{}", "---:|".repeat(r.paths.len()));
    let rows = r.paths.first().map_or(0, |p| p.summary.len());
    for i in 0..rows {
        let first = &r.paths[0].summary[i];
        let _ = write!(
            out,
            "| {} ({}) | {} |",
            first.label,
            first.unit,
            num(first.direct)
        );
        for p in &r.paths {
            let row = &p.summary[i];
            let compared = match row.added {
                Some(a) => format!("{a:+.0}"),
                None => format!("{:.2}×", row.ratio),
            };
            let _ = write!(out, " {} ({compared}) |", num(row.mesh));
        }
        let _ = writeln!(out);
    }
    // One row of a figure per ztunnel (client + server) for every path.
    let ztunnel_row = |out: &mut String, label: &str, cells: &dyn Fn(&PairPath) -> Vec<String>| {
        let _ = write!(out, "| {label} | |");
        for p in &r.paths {
            let _ = write!(out, " {} |", cells(p).join(" + "));
        }
        let _ = writeln!(out);
    };
    ztunnel_row(
        &mut out,
        "ztunnel CPU during throughput (s per GB, client + server)",
        &|p| {
            p.ztunnel_cpu_secs_per_gb
                .iter()
                .map(|c| format!("{c:.2}"))
                .collect()
        },
    );
    ztunnel_row(
        &mut out,
        "ztunnel CPU in the kernel (share, client + server)",
        &|p| {
            p.ztunnel_kernel_share
                .iter()
                .map(|c| c.map_or("—".to_string(), |c| format!("{:.0} %", c * 100.0)))
                .collect()
        },
    );
    let mut columns = vec![("direct", &r.direct_machine)];
    columns.extend(r.paths.iter().map(|p| (p.label, &p.machine)));
    machine_table(&mut out, &columns);
    connection_failures(
        &mut out,
        std::iter::once(&r.direct).chain(r.paths.iter().map(|p| &p.runs)),
    );
    ztunnel_table(
        &mut out,
        &r.ztunnel,
        s.held_connections,
        r.hbone_throughput_bytes,
    );
    let _ = writeln!(out, "\n### issue #19 targets (this layout)\n");
    for t in &r.targets {
        let _ = writeln!(
            out,
            "- {} {}: {}",
            if t.met { "met:" } else { "NOT met:" },
            t.what,
            t.measured
        );
    }
    let _ = writeln!(out);
    for n in &r.notes {
        let _ = writeln!(out, "- {n}");
    }
    out
}

/// A summary row by key.
fn row<'a>(p: &'a PairPath, key: &str) -> Option<&'a Row> {
    p.summary.iter().find(|r| r.key == key)
}

/// Issue #19's targets that this layout measures, each against every path it concerns.
pub fn targets(paths: &[PairPath], ztunnels: &[ZtunnelCost]) -> Vec<Target> {
    // More digits than the table: a figure rounded to the bound must not read as met.
    let mut out = Vec::new();
    let mut ratio_at_least = |prefix: &str, key: &str, what: &str, min: f64| {
        for p in paths.iter().filter(|p| p.name.starts_with(prefix)) {
            if let Some(r) = row(p, key) {
                let m = &p.machine;
                let (ceiling, kernel_only) = if r.direct > 0.0 && m.ceiling_gbit > 0.0 {
                    (
                        Some(m.ceiling_gbit / r.direct),
                        m.ceiling_gbit_kernel_only.map(|g| g / r.direct),
                    )
                } else {
                    (None, None)
                };
                let mut measured = format!("{:.3} ×", r.ratio);
                if let Some(c) = ceiling {
                    measured += &format!(" (this machine's CPUs carry at most {c:.2} ×");
                    if let Some(k) = kernel_only {
                        measured += &format!(", {k:.2} × if ztunnel's own code cost nothing");
                    }
                    measured += ")";
                }
                out.push(Target {
                    what: format!("{}, {what} ≥ {min} × direct", p.label),
                    measured,
                    met: r.ratio >= min,
                    cpu_ceiling: ceiling,
                    cpu_ceiling_kernel_only: kernel_only,
                });
            }
        }
    };
    ratio_at_least("hbone", "throughput_1_stream", "1 stream", 0.5);
    ratio_at_least("hbone", "throughput_4_streams", "4 streams", 0.45);
    ratio_at_least("passthrough", "throughput_1_stream", "1 stream", 0.6);
    let mut added_at_most = |key: &str, what: &str, max: f64| {
        for p in paths.iter().filter(|p| p.name.starts_with("hbone")) {
            if let Some(a) = row(p, key).and_then(|r| r.added) {
                out.push(Target {
                    what: format!("{}, added {what} ≤ {max} µs", p.label),
                    measured: format!("{a:+.1} µs"),
                    met: a <= max,
                    cpu_ceiling: None,
                    cpu_ceiling_kernel_only: None,
                });
            }
        }
    };
    added_at_most("latency_p50", "request/response p50", 25.0);
    added_at_most("connect_serial_setup_p50", "connection setup p50", 150.0);
    for z in ztunnels {
        let after = z.rss_after_kib as f64 / 1024.0;
        out.push(Target {
            what: format!("ztunnel {}, RSS after the run ≤ 12 MiB", z.node),
            measured: format!("{after:.2} MiB"),
            met: after <= 12.0,
            cpu_ceiling: None,
            cpu_ceiling_kernel_only: None,
        });
        out.push(Target {
            what: format!("ztunnel {}, ≤ 2 KiB per additional open tunnel", z.node),
            measured: format!("{:.2} KiB (second round)", z.kib_per_connection_second),
            met: z.kib_per_connection_second <= 2.0,
            cpu_ceiling: None,
            cpu_ceiling_kernel_only: None,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(name: &'static str, rows: &[(&'static str, f64, f64, bool)]) -> PairPath {
        PairPath {
            name,
            label: name,
            ztunnel_cpu_secs_per_gb: Vec::new(),
            ztunnel_kernel_share: Vec::new(),
            machine: MachineCpu::default(),
            runs: PathRuns::default(),
            summary: rows
                .iter()
                .map(|&(key, direct, mesh, time)| Row {
                    key,
                    label: key.into(),
                    unit: "",
                    direct,
                    mesh,
                    ratio: mesh / direct,
                    added: time.then_some(mesh - direct),
                })
                .collect(),
        }
    }

    #[test]
    fn targets_compare_each_path_with_its_bound() {
        let paths = [
            path(
                "hbone",
                &[
                    ("throughput_1_stream", 20.0, 10.0, false),
                    ("throughput_4_streams", 20.0, 8.0, false),
                    ("latency_p50", 40.0, 60.0, true),
                    ("connect_serial_setup_p50", 50.0, 250.0, true),
                ],
            ),
            path("passthrough", &[("throughput_1_stream", 20.0, 11.0, false)]),
        ];
        let got: Vec<(String, bool)> = targets(&paths, &[])
            .into_iter()
            .map(|t| (t.what, t.met))
            .collect();
        let want = [
            ("hbone, 1 stream ≥ 0.5 × direct", true),
            ("hbone, 4 streams ≥ 0.45 × direct", false),
            ("passthrough, 1 stream ≥ 0.6 × direct", false),
            ("hbone, added request/response p50 ≤ 25 µs", true),
            ("hbone, added connection setup p50 ≤ 150 µs", false),
        ];
        let want: Vec<(String, bool)> = want.iter().map(|(w, m)| (w.to_string(), *m)).collect();
        assert_eq!(got, want);
    }
}
