//! Medians over repetitions, the machine, a markdown table and the JSON record.

use std::fmt::Write as _;

use serde::Serialize;

use crate::manifests::{Shape, Written};
use crate::run::Run;

/// What the run was asked to do.
#[derive(Debug, Serialize)]
pub struct Settings {
    #[serde(flatten)]
    pub shape: Shape,
    pub repetitions: usize,
    pub timeout_secs: u64,
    /// The controller binary that ran (it was started with its default flags otherwise:
    /// 300 ms folder poll, 100 ms debounce).
    pub controller: String,
    pub manifests: Written,
}

/// The machine and the moment.
pub use crate::host::{load_average, machine, Machine};

/// Medians over the repetitions.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub listening_secs: f64,
    pub first_synced_secs: f64,
    pub all_synced_secs: f64,
    pub rss_kib: f64,
    pub peak_rss_kib: f64,
    pub cpu_secs: f64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub settings: Settings,
    pub median: Summary,
    pub runs: Vec<Run>,
}

impl Report {
    pub fn new(mut machine: Machine, settings: Settings, runs: Vec<Run>) -> Report {
        machine.load_average_end = load_average();
        let m = |f: fn(&Run) -> f64| median(runs.iter().map(f));
        let median = Summary {
            listening_secs: m(|r| r.listening_secs),
            first_synced_secs: m(|r| r.first_synced_secs),
            all_synced_secs: m(|r| r.all_synced_secs),
            rss_kib: m(|r| r.rss_kib as f64),
            peak_rss_kib: m(|r| r.peak_rss_kib as f64),
            cpu_secs: m(|r| r.cpu_secs),
        };
        Report {
            machine,
            settings,
            median,
            runs,
        }
    }
}

/// One line of the table: label, median, the figure of one run, decimals shown.
type Line = (&'static str, f64, fn(&Run) -> f64, usize);

/// The table: one line per figure, the median then every run.
pub fn markdown(r: &Report) -> String {
    let s = &r.settings;
    let m = &r.machine;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "amesh-controller: {} pods / {} services / {} policies in {} namespaces, {} nodes (one xDS client each); {} build, {} CPUs ({}), kernel {}, {}; load average {} at start, {} at end.\n",
        s.shape.pods, s.shape.services, s.shape.policies, s.shape.namespaces, s.shape.nodes,
        m.build, m.nproc, m.cpu, m.kernel, m.date, m.load_average_start, m.load_average_end
    );
    let mut header = "| | median |".to_string();
    let mut rule = "|---|---:|".to_string();
    for i in 1..=r.runs.len() {
        let _ = write!(header, " run {i} |");
        rule.push_str("---:|");
    }
    let _ = writeln!(out, "{header}\n{rule}");
    let mib = |kib: f64| kib / 1024.0;
    let rows: [Line; 6] = [
        (
            "time to all clients synced (s)",
            r.median.all_synced_secs,
            |x| x.all_synced_secs,
            2,
        ),
        (
            "time to first client synced (s)",
            r.median.first_synced_secs,
            |x| x.first_synced_secs,
            2,
        ),
        (
            "time to port open (s)",
            r.median.listening_secs,
            |x| x.listening_secs,
            3,
        ),
        (
            "controller RSS after sync (MiB)",
            mib(r.median.rss_kib),
            |x| x.rss_kib as f64 / 1024.0,
            1,
        ),
        (
            "controller peak RSS (MiB)",
            mib(r.median.peak_rss_kib),
            |x| x.peak_rss_kib as f64 / 1024.0,
            1,
        ),
        (
            "controller CPU to sync (s)",
            r.median.cpu_secs,
            |x| x.cpu_secs,
            2,
        ),
    ];
    for (label, median, each, digits) in rows {
        let mut line = format!("| {label} | {median:.digits$} |");
        for run in &r.runs {
            let _ = write!(line, " {:.digits$} |", each(run));
        }
        let _ = writeln!(out, "{line}");
    }
    let _ = write!(
        out,
        "\nTimes from the controller's spawn; synced = every type ACKed and the store holds all {} workloads, {} services, {} policies (besides the controller's own `istio-system/istio_converted_static_strict`). Generated manifests: {} files, {:.1} MiB.",
        s.shape.pods,
        s.shape.services,
        s.shape.policies,
        s.manifests.files,
        s.manifests.bytes as f64 / (1024.0 * 1024.0)
    );
    out
}

/// Median (mean of the middle two for an even count); NaN when empty.
fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.into_iter().collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn medians() {
        assert_eq!(median([3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median([4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median([]).is_nan());
    }
}
