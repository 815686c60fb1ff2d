//! The whole machine's busy CPU time, from `/proc/stat`: over a throughput run it counts every
//! process and interrupt the traffic causes, wherever the kernel ran them, so a path's cost is
//! comparable with direct's and with what the machine's CPUs can give.

use anyhow::Context;

use crate::host::ticks_per_sec;

/// CPU seconds the whole machine has been busy so far, summed over every CPU: user, nice,
/// system, irq and softirq time of `/proc/stat`'s first line. Idle and I/O wait are not work;
/// steal is the hypervisor's, not this machine's. Over a measurement this counts every
/// process and every interrupt the measured traffic causes, wherever the kernel ran it.
pub fn machine_busy_secs() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    machine_busy_from(&stat, ticks_per_sec())
}

/// How many CPUs `/proc/stat` sums in [`machine_busy_secs`] (its `cpuN` lines).
pub fn machine_cpus() -> anyhow::Result<usize> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    Ok(cpu_lines(&stat))
}

fn cpu_lines(stat: &str) -> usize {
    stat.lines()
        .filter(|l| {
            l.strip_prefix("cpu")
                .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
        })
        .count()
}

fn machine_busy_from(stat: &str, hz: f64) -> anyhow::Result<f64> {
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("cpu "))
        .context("/proc/stat does not start with the all-CPU line")?
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .context("/proc/stat: a CPU time is not a number")?;
    if fields.len() < 7 {
        anyhow::bail!(
            "/proc/stat: the all-CPU line has {} times, not 7 or more",
            fields.len()
        );
    }
    // user nice system idle iowait irq softirq [steal guest guest_nice]; guest time is also
    // counted in user.
    let busy = fields[0] + fields[1] + fields[2] + fields[5] + fields[6];
    Ok(busy as f64 / hz)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_busy_counts_work_and_not_idle_or_steal() {
        // user nice system idle iowait irq softirq steal guest guest_nice
        let stat = "cpu  300 10 200 9000 50 7 40 13 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        let busy = machine_busy_from(stat, 100.0).unwrap();
        assert!((busy - 5.57).abs() < 1e-9, "{busy}");
        assert_eq!(cpu_lines(stat), 1);
        let err = machine_busy_from("cpu0 1 2 3\n", 100.0).unwrap_err();
        assert!(err.to_string().contains("all-CPU line"), "{err}");
        let err = machine_busy_from("cpu  1 2 3\n", 100.0).unwrap_err();
        assert!(err.to_string().contains("3 times"), "{err}");
    }
}
