//! The results: raw runs per path, medians with the mesh/direct ratios, ztunnel cost, the
//! machine; rendered as a markdown table and serialised as JSON.

use std::fmt::Write;

use serde::Serialize;

use crate::connrate::ConnRun;
use crate::latency::LatencyRun;
use crate::settings::Settings;
use crate::stats::median;
use crate::throughput::ThroughputRun;

/// Every run of one path, in order.
#[derive(Debug, Default, Serialize)]
pub struct PathRuns {
    pub throughput_1_stream: Vec<ThroughputRun>,
    pub throughput_4_streams: Vec<ThroughputRun>,
    pub latency: Vec<LatencyRun>,
    pub connect_serial: Vec<ConnRun>,
    pub connect_parallel: Vec<ConnRun>,
}

/// One line of the summary: medians of both paths and how the mesh compares.
#[derive(Debug, Serialize)]
pub struct Row {
    pub key: &'static str,
    pub label: String,
    pub unit: &'static str,
    pub direct: f64,
    pub mesh: f64,
    /// mesh / direct.
    pub ratio: f64,
    /// mesh − direct, for times (what the mesh adds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub added: Option<f64>,
}

/// What one node's ztunnel cost.
#[derive(Debug, Serialize)]
pub struct ZtunnelCost {
    pub node: String,
    pub pid: i32,
    /// Right after the lab came up, before any traffic.
    pub rss_idle_kib: u64,
    /// With the held connections open.
    pub rss_held_kib: u64,
    /// After every measurement (and ztunnel's release of free heap).
    pub rss_after_kib: u64,
    /// Of that, anonymous memory (heap, stacks).
    pub rss_after_anon_kib: u64,
    /// Of that, file-backed pages (ztunnel's code and read-only data, the C library).
    pub rss_after_file_kib: u64,
    /// Highest RSS over the whole run (VmHWM).
    pub rss_peak_kib: u64,
    /// (held − idle) / held connections.
    pub kib_per_connection: f64,
    /// Second round on the same ztunnel: (held − RSS just before it) / held connections.
    pub kib_per_connection_second: f64,
    /// CPU seconds spent during the mesh throughput runs.
    pub throughput_cpu_secs: f64,
    /// `throughput_cpu_secs` per 10^9 bytes the mesh throughput runs delivered.
    pub cpu_secs_per_gb: f64,
}

/// The machine and the moment.
pub use crate::host::Machine;

#[derive(Debug, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub settings: Settings,
    pub summary: Vec<Row>,
    /// Capture mode of the second lab, when one was compared.
    pub compared_capture: Option<String>,
    /// Direct against the second lab's mesh path ("mesh" in these rows is that path).
    pub summary_compared: Option<Vec<Row>>,
    pub ztunnel: Vec<ZtunnelCost>,
    /// The whole machine during each path's throughput runs.
    pub machine_cpu: LabMachineCpu,
    /// Bytes the mesh throughput runs delivered (the CPU figures are per these).
    pub mesh_throughput_bytes: u64,
    pub direct: PathRuns,
    pub mesh: PathRuns,
    /// Runs of the second lab's mesh path (empty without a comparison).
    pub compared: PathRuns,
    pub notes: Vec<&'static str>,
}

/// The lab's paths' whole-machine CPU.
#[derive(Debug, Serialize)]
pub struct LabMachineCpu {
    pub direct: MachineCpu,
    pub mesh: MachineCpu,
    /// The second lab's mesh path, when one was compared.
    pub compared: Option<MachineCpu>,
}

pub const NOTES: &[&str] = &[
    "Throughput counts the bytes the sink received (one direction, nothing echoed back).",
    "Latency: 1 KiB request and 1 KiB response on one kept connection, one exchange at a time.",
    "Connection setup: connect + 1-byte echo + close, timed per connection.",
    "ztunnel CPU: utime+stime of each ztunnel during the mesh throughput runs; per GB = 10^9 bytes delivered.",
    "RSS after the run: 3 s after the last measurement (ztunnel returns free heap every second); split into anonymous (RssAnon) and file-backed (RssFile) pages.",
    "Memory per connection: (RSS with the connections held open - idle RSS after lab up) / count, per node; it includes what the first connections make stay (the pool's HBONE connections, grown tables). Second round: the same count again on the same ztunnels, (RSS held - RSS just before) / count.",
    MACHINE_CPU_NOTE,
    "Compared capture (--compare-capture, default ebpf): a second lab of the same layout runs beside the first; its mesh path is measured in the same repetitions, interleaved with the other paths. The ztunnel table is the first lab's.",
];

/// What the whole-machine rows mean (both layouts).
pub const MACHINE_CPU_NOTE: &str = "Whole machine: busy time of all CPUs (/proc/stat: user, nice, system, irq, softirq; not idle, I/O wait or steal) during a path's throughput runs (1 and 4 streams), per GB they delivered, and as a share of all CPUs' time. CPU ceiling: the throughput all CPUs could carry at that cost, over direct's 1-stream median; a path whose CPUs were all busy runs at it. With ztunnel's user space free: the same without the measured ztunnels' user-space time, the bound left if ztunnel's own code cost nothing and only the kernel's work for its sockets remained.";

/// Median of one figure over the runs of a path.
fn med<T>(runs: &[T], f: impl Fn(&T) -> f64) -> f64 {
    median(runs.iter().map(f))
}

/// The median 1-stream throughput of a path's runs (Gbit/s): what CPU ceilings are put over.
pub fn one_stream_gbit(runs: &PathRuns) -> f64 {
    med(&runs.throughput_1_stream, |r| r.gbit_per_s)
}

/// The summary rows from both paths' runs.
pub fn summarise(direct: &PathRuns, mesh: &PathRuns) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut row = |key, label: &str, unit, time: bool, d: f64, m: f64| {
        rows.push(Row {
            key,
            label: label.to_string(),
            unit,
            direct: d,
            mesh: m,
            ratio: m / d,
            added: time.then_some(m - d),
        })
    };
    let gbps = |r: &ThroughputRun| r.gbit_per_s;
    row(
        "throughput_1_stream",
        "throughput, 1 stream",
        "Gbit/s",
        false,
        med(&direct.throughput_1_stream, gbps),
        med(&mesh.throughput_1_stream, gbps),
    );
    row(
        "throughput_4_streams",
        "throughput, 4 streams",
        "Gbit/s",
        false,
        med(&direct.throughput_4_streams, gbps),
        med(&mesh.throughput_4_streams, gbps),
    );
    let percentiles = [
        ("latency_p50", "1 KiB request/response p50", 50),
        ("latency_p90", "1 KiB request/response p90", 90),
        ("latency_p99", "1 KiB request/response p99", 99),
    ];
    for (key, label, p) in percentiles {
        let at = |r: &LatencyRun| match p {
            50 => r.p50_us,
            90 => r.p90_us,
            _ => r.p99_us,
        };
        row(
            key,
            label,
            "µs",
            true,
            med(&direct.latency, at),
            med(&mesh.latency, at),
        );
    }
    let conn_sets = [
        (
            ("connect_serial_per_s", "connect_serial_setup_p50"),
            &direct.connect_serial,
            &mesh.connect_serial,
        ),
        (
            ("connect_parallel_per_s", "connect_parallel_setup_p50"),
            &direct.connect_parallel,
            &mesh.connect_parallel,
        ),
    ];
    for ((rate_key, setup_key), runs_d, runs_m) in conn_sets {
        let how = match runs_d.first().map(|r| r.threads) {
            Some(t) if t > 1 => format!("{t} in parallel"),
            _ => "serial".to_string(),
        };
        row(
            rate_key,
            &format!("connections, {how}"),
            "conn/s",
            false,
            med(runs_d, |r| r.per_s),
            med(runs_m, |r| r.per_s),
        );
        row(
            setup_key,
            &format!("connection setup p50, {how}"),
            "µs",
            true,
            med(runs_d, |r| r.setup_p50_us),
            med(runs_m, |r| r.setup_p50_us),
        );
    }
    rows
}

/// The markdown the bench prints.
pub fn markdown(r: &Report) -> String {
    let s = &r.settings;
    let m = &r.machine;
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "## amesh lab benchmark: mesh (HBONE, {} capture, {} control plane) vs direct\n",
        s.capture_mode,
        s.control_plane.name()
    );
    let _ = writeln!(
        out,
        "{} run, medians of {} repetition(s); {} s per throughput run; {} CPUs ({}), kernel {}, {}, {} build; load average {} at start, {} at end.\n",
        s.mode, s.repetitions, s.throughput_secs, m.nproc, m.cpu, m.kernel, m.date, m.build,
        m.load_average_start, m.load_average_end
    );
    let _ = writeln!(
        out,
        "| measurement | direct | mesh | mesh/direct | mesh − direct |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|");
    for row in &r.summary {
        let added = row
            .added
            .map(|a| format!("{a:+.0} {}", row.unit))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "| {} ({}) | {} | {} | {:.2} | {} |",
            row.label,
            row.unit,
            num(row.direct),
            num(row.mesh),
            row.ratio,
            added
        );
    }
    if let (Some(mode), Some(rows)) = (&r.compared_capture, &r.summary_compared) {
        let _ = writeln!(
            out,
            "\n### capture modes side by side: {} vs {} vs direct\n",
            s.capture_mode, mode
        );
        let _ = writeln!(
            out,
            "| measurement | direct | mesh, {a} | mesh, {b} | {a}/direct | {b}/direct | {b}/{a} |",
            a = s.capture_mode,
            b = mode
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|");
        for (first, second) in r.summary.iter().zip(rows) {
            let _ = writeln!(
                out,
                "| {} ({}) | {} | {} | {} | {:.2} | {:.2} | {:.2} |",
                first.label,
                first.unit,
                num(first.direct),
                num(first.mesh),
                num(second.mesh),
                first.ratio,
                second.ratio,
                second.mesh / first.mesh
            );
        }
    }
    let mut columns = vec![
        ("direct", &r.machine_cpu.direct),
        ("mesh", &r.machine_cpu.mesh),
    ];
    if let (Some(mode), Some(c)) = (&r.compared_capture, &r.machine_cpu.compared) {
        columns.push((mode.as_str(), c));
    }
    machine_table(&mut out, &columns);
    connection_failures(&mut out, [&r.direct, &r.mesh, &r.compared]);
    ztunnel_table(
        &mut out,
        &r.ztunnel,
        s.held_connections,
        r.mesh_throughput_bytes,
    );
    for n in &r.notes {
        let _ = writeln!(out, "- {n}");
    }
    out
}

/// What the whole machine spent on a path's throughput runs, and the throughput its CPUs
/// could carry at that cost.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MachineCpu {
    /// Busy CPU seconds of the whole machine (every process, interrupt and softirq) per GB
    /// delivered.
    pub cpu_secs_per_gb: f64,
    /// Busy time over all CPUs' time during the runs: near 1, the path was CPU-bound.
    pub busy_fraction: f64,
    /// The throughput all CPUs could carry at `cpu_secs_per_gb`, over direct's 1-stream median.
    pub ceiling_ratio: f64,
    /// The same with the ztunnels' user-space time left out: the bound that no change to
    /// ztunnel's own code can lift, only fewer or cheaper kernel hops. None for direct.
    pub ceiling_ratio_kernel_only: Option<f64>,
    /// The throughput all CPUs could carry at `cpu_secs_per_gb` (Gbit/s).
    pub ceiling_gbit: f64,
    /// The same without the ztunnels' user-space time.
    pub ceiling_gbit_kernel_only: Option<f64>,
}

impl MachineCpu {
    /// `busy` CPU seconds over `secs` of runs that delivered `bytes`, on `cpus` CPUs;
    /// `ztunnel_user` the ztunnels' user-space seconds in them; `direct_gbit` direct's
    /// 1-stream median.
    pub fn new(
        busy: f64,
        secs: f64,
        bytes: u64,
        cpus: usize,
        ztunnel_user: Option<f64>,
        direct_gbit: f64,
    ) -> MachineCpu {
        let gb = bytes as f64 / 1e9;
        if gb <= 0.0 || secs <= 0.0 || cpus == 0 || direct_gbit <= 0.0 {
            return MachineCpu::default();
        }
        // CPUs ÷ (CPU seconds per GB) = GB per second; × 8 = Gbit/s.
        let ceiling = |cpu_secs: f64| cpus as f64 / (cpu_secs / gb) * 8.0;
        let gbit = ceiling(busy);
        let gbit_kernel_only = ztunnel_user.map(|u| ceiling((busy - u).max(f64::MIN_POSITIVE)));
        MachineCpu {
            cpu_secs_per_gb: busy / gb,
            busy_fraction: busy / (secs * cpus as f64),
            ceiling_ratio: gbit / direct_gbit,
            ceiling_ratio_kernel_only: gbit_kernel_only.map(|g| g / direct_gbit),
            ceiling_gbit: gbit,
            ceiling_gbit_kernel_only: gbit_kernel_only,
        }
    }
}

/// The whole machine during each column's throughput runs, one column per path.
pub fn machine_table(out: &mut String, columns: &[(&str, &MachineCpu)]) {
    let heads: Vec<&str> = columns.iter().map(|(n, _)| *n).collect();
    let _ = writeln!(
        out,
        "\n| whole machine during throughput | {} |",
        heads.join(" | ")
    );
    let _ = writeln!(out, "|---|{}", "---:|".repeat(columns.len()));
    let line = |out: &mut String, label: &str, f: &dyn Fn(&MachineCpu) -> String| {
        let cells: Vec<String> = columns.iter().map(|(_, m)| f(m)).collect();
        let _ = writeln!(out, "| {label} | {} |", cells.join(" | "));
    };
    line(out, "CPU, all CPUs (s per GB)", &|m| {
        format!("{:.2}", m.cpu_secs_per_gb)
    });
    line(out, "busy (share of all CPUs)", &|m| {
        format!("{:.0} %", m.busy_fraction * 100.0)
    });
    line(out, "CPU ceiling (× direct, 1 stream)", &|m| {
        format!("{:.2}", m.ceiling_ratio)
    });
    line(
        out,
        "… with ztunnel's user space free (× direct)",
        &|m| {
            m.ceiling_ratio_kernel_only
                .map_or("—".to_string(), |c| format!("{c:.2}"))
        },
    );
}

/// A line saying how many connections of the connection-rate runs failed, if any did.
pub fn connection_failures<'a>(out: &mut String, runs: impl IntoIterator<Item = &'a PathRuns>) {
    let errors: usize = runs
        .into_iter()
        .flat_map(|p| p.connect_serial.iter().chain(&p.connect_parallel))
        .map(|c| c.errors)
        .sum();
    if errors > 0 {
        let _ = writeln!(
            out,
            "\n{errors} connection(s) failed during the connection-rate runs (see the JSON)."
        );
    }
}

/// Each ztunnel's memory and CPU, one column per ztunnel, and both together per GB of the
/// `bytes` the mesh throughput runs moved (`held`: connections held open for the memory rows).
pub fn ztunnel_table(out: &mut String, ztunnels: &[ZtunnelCost], held: usize, bytes: u64) {
    let _ = writeln!(out, "\n| ztunnel | {} |", names(ztunnels).join(" | "));
    let _ = writeln!(out, "|---|{}", "---:|".repeat(ztunnels.len()));
    let mib = |k: u64| format!("{:.1}", k as f64 / 1024.0);
    let line = |out: &mut String, label: String, f: &dyn Fn(&ZtunnelCost) -> String| {
        let cells: Vec<String> = ztunnels.iter().map(f).collect();
        let _ = writeln!(out, "| {label} | {} |", cells.join(" | "));
    };
    line(out, "RSS idle, before any traffic (MiB)".into(), &|z| {
        mib(z.rss_idle_kib)
    });
    line(
        out,
        format!("RSS with {} connections open (MiB)", held),
        &|z| mib(z.rss_held_kib),
    );
    line(out, "RSS after the run (MiB)".into(), &|z| {
        mib(z.rss_after_kib)
    });
    line(out, "… of which heap and stacks (MiB)".into(), &|z| {
        mib(z.rss_after_anon_kib)
    });
    line(
        out,
        "… of which code, read-only data, libc (MiB)".into(),
        &|z| mib(z.rss_after_file_kib),
    );
    line(out, "RSS peak during the run (MiB)".into(), &|z| {
        mib(z.rss_peak_kib)
    });
    line(out, "memory per open connection (KiB)".into(), &|z| {
        format!("{:.1}", z.kib_per_connection)
    });
    line(
        out,
        "… one more open connection (second round, KiB)".into(),
        &|z| format!("{:.1}", z.kib_per_connection_second),
    );
    line(out, "CPU during mesh throughput (s per GB)".into(), &|z| {
        format!("{:.2}", z.cpu_secs_per_gb)
    });
    let total: f64 = ztunnels.iter().map(|z| z.cpu_secs_per_gb).sum();
    let _ = writeln!(
        out,
        "\nBoth ztunnels together: {total:.2} CPU s per GB over {:.1} GB moved through the mesh.",
        bytes as f64 / 1e9
    );
}

fn names(z: &[ZtunnelCost]) -> Vec<String> {
    z.iter().map(|z| z.node.clone()).collect()
}

/// Three significant digits or so, without noise for large values.
pub fn num(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ceiling_is_what_all_cpus_carry_at_the_measured_cost() {
        // 4 CPU s over 2 s on 2 CPUs for 1 GB: 4 s per GB, all busy; 2 CPUs carry 0.5 GB/s
        // = 4 Gbit/s, 0.4 × a 10 Gbit/s direct path; without 1 s of ztunnel user time,
        // 3 s per GB: 5.33 Gbit/s, 0.53 ×.
        let m = MachineCpu::new(4.0, 2.0, 1_000_000_000, 2, Some(1.0), 10.0);
        assert!((m.cpu_secs_per_gb - 4.0).abs() < 1e-9);
        assert!((m.busy_fraction - 1.0).abs() < 1e-9);
        assert!((m.ceiling_ratio - 0.4).abs() < 1e-9);
        let k = m.ceiling_ratio_kernel_only.unwrap();
        assert!((k - 16.0 / 30.0).abs() < 1e-9, "{k}");
        assert!((m.ceiling_gbit - 4.0).abs() < 1e-9);
        assert!((m.ceiling_gbit_kernel_only.unwrap() - 16.0 / 3.0).abs() < 1e-9);
        // Nothing measured: no figures rather than infinities.
        let none = MachineCpu::new(1.0, 1.0, 0, 2, None, 10.0);
        assert_eq!(none.ceiling_ratio, 0.0);
        assert!(none.ceiling_ratio_kernel_only.is_none());
    }
}
