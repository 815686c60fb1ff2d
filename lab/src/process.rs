//! Lab processes (echo apps, later ztunnels and the controller): started inside a netns and
//! recorded with their kernel start time, so that a later run never kills an unrelated process
//! that happens to reuse the pid.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::netns::{self, NetnsError};

/// A process the lab started.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    /// What it is, e.g. `echo default/web-5d8f-x2k4q`.
    pub name: String,
    pub pid: i32,
    /// Field 22 of `/proc/PID/stat`: tells this process apart from a later one with its pid.
    pub start_time: u64,
    /// The netns it was started in.
    pub netns: String,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
}

/// A process that could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("cannot create log file {path}: {source}")]
    Log {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start {name} ({program}) in netns {netns}: {source}")]
    Spawn {
        name: String,
        program: String,
        netns: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{name} (pid {pid}) exited during startup with {status}; its log {log} ends with:\n{tail}"
    )]
    Exited {
        name: String,
        pid: i32,
        status: std::process::ExitStatus,
        log: String,
        tail: String,
    },
    #[error("{name} (pid {pid}) did not listen on ports {ports:?} within {secs}s; its log {log} ends with:\n{tail}")]
    NotListening {
        name: String,
        pid: i32,
        ports: Vec<u16>,
        secs: u64,
        log: String,
        tail: String,
    },
}

/// Where the output of the lab process `name` goes: `<run dir>/logs/<name>.log`, the name
/// made safe for a file name.
pub fn log_file(run_dir: &Path, name: &str) -> PathBuf {
    let file: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    run_dir.join("logs").join(format!("{file}.log"))
}

/// Starts `cmd` inside `netns` in a session of its own (so a terminal's Ctrl-C does not reach
/// it), with stdout and stderr appended to `log`. `keep_fd`, if given, stays open in the child
/// (the lab lock a keeper process holds).
/// Spawns `cmd` inside the named netns with the stdio it was given (a CNI plugin, run and
/// waited for by the caller); not recorded as a lab process.
pub fn spawn_piped_in_netns(netns_name: &str, mut cmd: Command) -> std::io::Result<Child> {
    let ns: File = netns::open(netns_name).map_err(std::io::Error::other)?;
    let ns_fd = ns.as_raw_fd();
    // SAFETY: the hook runs in the forked child before exec and only makes one raw system
    // call (setns), which is async-signal-safe; it touches no allocator or lock.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(ns_fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn();
    // The child has its own copy now (or failed): ours may go.
    drop(ns);
    child
}

pub fn spawn_in_netns(
    name: &str,
    netns_name: &str,
    mut cmd: Command,
    log: &Path,
    keep_fd: Option<RawFd>,
) -> Result<(Child, ProcessRecord), ProcessError> {
    let ns: File = netns::open(netns_name)?;
    let ns_fd = ns.as_raw_fd();
    let log_err = |source| ProcessError::Log {
        path: log.display().to_string(),
        source,
    };
    let out = File::options()
        .create(true)
        .append(true)
        .open(log)
        .map_err(log_err)?;
    let err = out.try_clone().map_err(log_err)?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    // SAFETY: the hook runs in the forked child before exec and only makes raw system calls
    // (setns, setsid, fcntl), which are async-signal-safe; it touches no allocator or lock.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(ns_fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(fd) = keep_fd {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|source| ProcessError::Spawn {
        name: name.to_string(),
        program: cmd.get_program().to_string_lossy().into_owned(),
        netns: netns_name.to_string(),
        source,
    })?;
    drop(ns);
    let pid = child.id() as i32;
    let record = ProcessRecord {
        name: name.to_string(),
        pid,
        // Just forked, so it exists unless it already died; 0 never matches a real process.
        start_time: start_time(pid).unwrap_or(0),
        netns: netns_name.to_string(),
        log: log.to_path_buf(),
    };
    Ok((child, record))
}

/// Waits until the process listens on all `ports` (TCP, any address, in its own netns), fails
/// early if it exits.
pub fn wait_listening(
    child: &mut Child,
    record: &ProcessRecord,
    ports: &[u16],
    timeout: Duration,
) -> Result<(), ProcessError> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(ProcessError::Exited {
                name: record.name.clone(),
                pid: record.pid,
                status,
                log: record.log.display().to_string(),
                tail: log_tail(&record.log),
            });
        }
        let listening = listening_ports(record.pid);
        if ports.iter().all(|p| listening.contains(p)) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(ProcessError::NotListening {
                name: record.name.clone(),
                pid: record.pid,
                ports: ports.to_vec(),
                secs: timeout.as_secs(),
                log: record.log.display().to_string(),
                tail: log_tail(&record.log),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The last lines of a log, for error messages (the log may be gone once the lab is removed).
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(10)..].join("\n");
    if tail.is_empty() {
        "(empty)".to_string()
    } else {
        tail
    }
}

/// TCP ports in LISTEN state in the netns of process `pid` (from `/proc/PID/net/tcp{,6}`).
pub fn listening_ports(pid: i32) -> Vec<u16> {
    let mut ports = Vec::new();
    for file in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{file}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let mut cols = line.split_whitespace();
            let local = cols.nth(1);
            let state = cols.nth(1);
            if state != Some("0A") {
                continue;
            }
            if let Some(port) = local
                .and_then(|l| l.rsplit_once(':'))
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
            {
                ports.push(port);
            }
        }
    }
    ports
}

/// The kernel start time of `pid` (field 22 of `/proc/PID/stat`), if it exists.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: fields after it are
    // counted from the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let i = s.rfind(')')?;
            s[i + 2..].chars().next()
        })
        .is_some_and(|state| state == 'Z' || state == 'X')
}

/// Whether the recorded process still runs (same pid *and* start time, not a zombie).
pub fn is_alive(record: &ProcessRecord) -> bool {
    start_time(record.pid) == Some(record.start_time) && !is_zombie(record.pid)
}

/// Stops the recorded processes: SIGTERM, up to `grace` to exit, then SIGKILL. Processes that are
/// gone, or whose pid now belongs to someone else, are left alone.
pub fn terminate(records: &[ProcessRecord], grace: Duration) {
    let alive: Vec<&ProcessRecord> = records.iter().filter(|r| is_alive(r)).collect();
    for r in &alive {
        let _ = kill(Pid::from_raw(r.pid), Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && alive.iter().any(|r| is_alive(r)) {
        std::thread::sleep(Duration::from_millis(20));
    }
    for r in alive.iter().filter(|r| is_alive(r)) {
        tracing::warn!(name = %r.name, pid = r.pid, "did not stop on SIGTERM, killing");
        let _ = kill(Pid::from_raw(r.pid), Signal::SIGKILL);
    }
    wait_gone(alive.iter().map(|r| (r.pid, Some(r.start_time))));
}

/// SIGKILLs the recorded process, if it still runs, and waits briefly for it to go (a test's
/// crash of one container).
pub fn kill_and_wait(record: &ProcessRecord) {
    if is_alive(record) {
        let _ = kill(Pid::from_raw(record.pid), Signal::SIGKILL);
    }
    wait_gone(std::iter::once((record.pid, Some(record.start_time))));
}

/// SIGKILLs every process living in the named netns (leftovers have no say) and waits briefly
/// for them to go.
pub fn kill_netns_processes(netns_name: &str) {
    let pids = netns::pids(netns_name);
    for pid in &pids {
        tracing::debug!(pid, netns = netns_name, "killing leftover process");
        let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
    }
    wait_gone(pids.iter().map(|p| (*p, None)));
}

fn wait_gone(procs: impl Iterator<Item = (i32, Option<u64>)>) {
    let procs: Vec<(i32, Option<u64>)> = procs.collect();
    let deadline = Instant::now() + Duration::from_secs(2);
    let running = |&(pid, st): &(i32, Option<u64>)| {
        let now = start_time(pid);
        now.is_some() && (st.is_none() || now == st) && !is_zombie(pid)
    };
    while Instant::now() < deadline && procs.iter().any(running) {
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_of_self_is_stable() {
        let me = std::process::id() as i32;
        let a = start_time(me).unwrap();
        assert_eq!(start_time(me), Some(a));
        assert!(!is_zombie(me));
        assert_eq!(start_time(i32::MAX), None);
    }
}
