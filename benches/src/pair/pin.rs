//! CPU affinity of a running process, thread by thread: the pair layout pins each ztunnel to
//! one core for its "pinned" paths and gives them back every core for the others. Applied to
//! every thread (`/proc/<pid>/task`); threads the process starts later inherit the affinity
//! of the thread that starts them.

use anyhow::{bail, Context};

/// The CPUs this process may run on (what "unpinned" gives back).
pub fn own_cpus() -> anyhow::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most its size into it.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            bail!("sched_getaffinity: {}", std::io::Error::last_os_error());
        }
        set
    };
    // SAFETY: CPU_ISSET reads the set; every index is below CPU_SETSIZE.
    let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect();
    if cpus.is_empty() {
        bail!("this process may run on no CPU at all");
    }
    Ok(cpus)
}

/// Sets the affinity of every thread of `pid` to `cpus`. A thread that exits meanwhile is
/// skipped; the process itself gone is an error.
pub fn set_affinity(pid: i32, cpus: &[usize]) -> anyhow::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET write inside it and `c` is checked
    // against CPU_SETSIZE.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        for &c in cpus {
            if c >= libc::CPU_SETSIZE as usize {
                bail!("CPU {c} is beyond what an affinity mask can name");
            }
            libc::CPU_SET(c, &mut set);
        }
        set
    };
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .with_context(|| format!("listing the threads of {pid} (did it exit?)"))?;
    for task in tasks.filter_map(Result::ok) {
        let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: sched_setaffinity reads `set`, of the size we pass.
        let rc =
            unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ESRCH) {
                bail!("setting the affinity of thread {tid} of {pid} to {cpus:?}: {e}");
            }
        }
    }
    Ok(())
}
