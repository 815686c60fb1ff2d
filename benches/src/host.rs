//! What both benchmark binaries read about the host and about the processes they measure: the
//! machine (CPU, kernel, build profile, load average) and `/proc/<pid>` CPU time and memory.

use anyhow::Context;
use serde::Serialize;

/// The machine a report was measured on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu: String,
    pub kernel: String,
    pub date: String,
    /// Profile the bench was built with (the binaries it runs sit beside it, same profile).
    pub build: &'static str,
    pub load_average_start: String,
    pub load_average_end: String,
}

/// The 1, 5 and 15 minute load averages.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The machine now; `load_average_end` is the load average at this moment (callers that take
/// this at the start overwrite it at the end).
pub fn machine(load_average_start: String) -> Machine {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    Machine {
        nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|k| k.trim().to_string())
            .unwrap_or_default(),
        date: time::OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .unwrap_or_else(|_| time::OffsetDateTime::now_utc())
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        build: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        load_average_start,
        load_average_end: load_average(),
    }
}

/// CPU seconds a process has spent so far, in user space and in the kernel on its behalf.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuSplit {
    pub user: f64,
    pub system: f64,
}

impl CpuSplit {
    pub fn total(&self) -> f64 {
        self.user + self.system
    }
}

/// Clock ticks per second of `/proc`'s CPU times.
pub fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64
}

/// User and system CPU seconds of the whole process so far (`utime`, `stime`).
pub fn cpu_split(pid: i32) -> anyhow::Result<CpuSplit> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat (did the process exit?)"))?;
    split_from(&stat, ticks_per_sec())
}

fn split_from(stat: &str, hz: f64) -> anyhow::Result<CpuSplit> {
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line; `rest` starts at field 3.
    let ticks = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i - 3)
            .context("short /proc/PID/stat")?
            .parse()
            .context("utime/stime not a number")
    };
    Ok(CpuSplit {
        user: ticks(14)? as f64 / hz,
        system: ticks(15)? as f64 / hz,
    })
}

/// `kB` fields of `/proc/<pid>/status` (`VmRSS:`, `VmHWM:`, ...) in KiB, in the order asked,
/// from one read so that they describe the same moment.
pub fn status_fields_kib<const N: usize>(pid: i32, fields: [&str; N]) -> anyhow::Result<[u64; N]> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status (did the process exit?)"))?;
    let mut out = [0; N];
    for (v, field) in out.iter_mut().zip(fields) {
        *v = status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no {field} in /proc/{pid}/status"))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_reads_utime_and_stime_after_the_command_name() {
        // A command name with a space and a parenthesis; utime 250, stime 750 ticks.
        let stat = "42 (zt (x) 1) S 1 42 42 0 -1 4194560 10 0 0 0 250 750 0 0 20 0 2 0 9 1 1";
        let c = split_from(stat, 100.0).unwrap();
        assert_eq!(
            c,
            CpuSplit {
                user: 2.5,
                system: 7.5
            }
        );
        assert_eq!(c.total(), 10.0);
        let err = split_from("42 (zt) S 1 42", 100.0).unwrap_err();
        assert!(err.to_string().contains("short"), "{err}");
        // This process's own line parses.
        cpu_split(std::process::id() as i32).unwrap();
    }
}
