//! Named network namespaces (`/run/netns/NAME`, the iproute2 convention): create, delete, list,
//! run code inside one, set sysctls, find the processes living in one.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};

use crate::cmd::{self, CmdError};

/// Where iproute2 keeps named network namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// A network namespace operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error(transparent)]
    Cmd(#[from] CmdError),
    #[error("cannot open network namespace {name:?} ({path}): {source}")]
    Open {
        name: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot enter network namespace {name:?}: {source} (root needed)")]
    Enter {
        name: String,
        #[source]
        source: nix::Error,
    },
    #[error("setting sysctl {key}={value} in network namespace {name:?} failed: {source}")]
    Sysctl {
        name: String,
        key: String,
        value: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the thread running inside network namespace {0:?} panicked")]
    Panicked(String),
}

/// Path of the named netns.
pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Whether the named netns exists.
pub fn exists(name: &str) -> bool {
    path(name).exists()
}

/// Creates the named netns (`ip netns add`) and brings its loopback up.
pub fn add(name: &str) -> Result<(), NetnsError> {
    cmd::ip(["netns", "add", name])?;
    cmd::ip_in(name, ["link", "set", "lo", "up"])?;
    Ok(())
}

/// Deletes the named netns; a netns that is already gone is not an error. The kernel frees it
/// (with its interfaces) once no process lives in it any more.
pub fn delete(name: &str) -> Result<(), NetnsError> {
    if !exists(name) {
        return Ok(());
    }
    match cmd::ip(["netns", "delete", name]) {
        Ok(_) => Ok(()),
        Err(_) if !exists(name) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Names of all named network namespaces, sorted.
pub fn list() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(NETNS_DIR)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Opens the named netns, for `setns`.
pub fn open(name: &str) -> Result<File, NetnsError> {
    let p = path(name);
    File::open(&p).map_err(|source| NetnsError::Open {
        name: name.to_string(),
        path: p.display().to_string(),
        source,
    })
}

/// Runs `f` on a fresh thread that has entered the named netns, and returns its result. Sockets
/// created inside `f` stay in that netns for their whole life, so a socket connected here can be
/// handed back and used from any thread (this is how tests act "from inside a pod").
pub fn run_in<T, F>(name: &str, f: F) -> Result<T, NetnsError>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    let ns = open(name)?;
    std::thread::scope(|s| {
        let handle = s.spawn(move || {
            // setns(CLONE_NEWNET) changes only this thread's namespace; the thread ends with f.
            setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter {
                name: name.to_string(),
                source,
            })?;
            Ok(f())
        });
        handle
            .join()
            .unwrap_or_else(|_| Err(NetnsError::Panicked(name.to_string())))
    })
}

/// Sets a `net.*` sysctl inside the named netns. `key` uses dots (`net.ipv4.ip_forward`).
/// Networking sysctls are per netns and resolved against the writing thread's netns.
pub fn sysctl(name: &str, key: &str, value: &str) -> Result<(), NetnsError> {
    let file = Path::new("/proc/sys").join(key.replace('.', "/"));
    run_in(name, || std::fs::write(&file, value))?.map_err(|source| NetnsError::Sysctl {
        name: name.to_string(),
        key: key.to_string(),
        value: value.to_string(),
        source,
    })
}

/// Reads a `net.*` sysctl inside the named netns.
pub fn read_sysctl(name: &str, key: &str) -> Result<String, NetnsError> {
    let file = Path::new("/proc/sys").join(key.replace('.', "/"));
    run_in(name, || std::fs::read_to_string(&file))?
        .map(|s| s.trim().to_string())
        .map_err(|source| NetnsError::Sysctl {
            name: name.to_string(),
            key: key.to_string(),
            value: "<read>".to_string(),
            source,
        })
}

/// Pids of the processes whose main thread lives in the named netns (like `ip netns pids`),
/// never including this process.
pub fn pids(name: &str) -> Vec<i32> {
    let Ok(meta) = std::fs::metadata(path(name)) else {
        return Vec::new();
    };
    let target = (meta.dev(), meta.ino());
    let me = std::process::id() as i32;
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}/ns/net"))
                .map(|m| (m.dev(), m.ino()) == target)
                .unwrap_or(false)
        })
        .collect()
}
