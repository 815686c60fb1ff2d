//! Network namespaces: doing socket work inside a pod's netns from the node's ztunnel.
//!
//! A socket belongs to the namespace it was created in, whatever thread uses it later. So to
//! make a socket for a pod, the calling thread enters the pod's netns (`setns`), creates the
//! socket and returns to ztunnel's own netns before doing anything else: about a microsecond,
//! where handing the work to a thread living in the pod's netns cost two thread wake-ups on
//! every connection to an app. The return is guaranteed by a guard; a thread that cannot get
//! back would make other pods' sockets in the wrong namespace, so ztunnel aborts instead.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use nix::sched::CloneFlags;

/// A handle on a network namespace (its open descriptor).
#[derive(Clone)]
pub struct Netns {
    inner: Arc<Inner>,
}

struct Inner {
    /// Path the namespace was opened from (for logs and the state file).
    path: PathBuf,
    /// Namespace inode, to recognise the same netns under another path.
    inode: u64,
    file: File,
}

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot open network namespace {path}: {source} (does the pod sandbox still exist?)")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot enter network namespace {path}: {source} (ztunnel needs CAP_SYS_ADMIN)")]
    Enter {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a network namespace ({detail}); the runtime must pass the pod sandbox's netns")]
    NotNetns { path: PathBuf, detail: String },
    #[error("{path} is {whose} network namespace, not a pod's: refusing to capture it")]
    NotAPod { path: PathBuf, whose: &'static str },
}

/// ztunnel's own network namespace, where every thread returns after working in a pod's.
/// Opened once, by the first caller, from its own thread's namespace: [`Netns::run`] asks
/// before it enters a pod's, so that is always ztunnel's (`init` at startup makes it certain).
fn home() -> io::Result<&'static File> {
    static HOME: OnceLock<File> = OnceLock::new();
    if let Some(f) = HOME.get() {
        return Ok(f);
    }
    let f = File::open("/proc/thread-self/ns/net")?;
    Ok(HOME.get_or_init(|| f))
}

/// Records ztunnel's own netns; call once at startup, before any pod's netns is entered.
pub fn init() -> io::Result<()> {
    home().map(|_| ())
}

/// Puts the thread back into ztunnel's netns when dropped.
struct Entered {
    home: &'static File,
}

impl Drop for Entered {
    fn drop(&mut self) {
        if let Err(e) = nix::sched::setns(self.home.as_fd(), CloneFlags::CLONE_NEWNET) {
            // Carrying on would open later sockets (any pod's, the node's) in a pod's netns.
            eprintln!("ztunnel: cannot return to its own network namespace ({e}); aborting");
            std::process::abort();
        }
    }
}

impl Netns {
    /// Opens a pod's namespace at `path` (`/var/run/netns/x`, `/proc/<pid>/ns/net`); fails if
    /// it is not a network namespace, if it is ztunnel's own or the host's, or if it cannot be
    /// entered.
    pub fn open(path: &Path) -> Result<Netns, NetnsError> {
        Netns::open_checked(path, false)
    }

    /// Like [`Netns::open`], but ztunnel's own namespace (or the host's) is allowed: for a
    /// dedicated ztunnel, which serves the workload it runs beside, in its own netns.
    pub fn open_own(path: &Path) -> Result<Netns, NetnsError> {
        Netns::open_checked(path, true)
    }

    fn open_checked(path: &Path, allow_own: bool) -> Result<Netns, NetnsError> {
        let open_err = |source| NetnsError::Open {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(open_err)?;
        let meta = file.metadata().map_err(open_err)?;
        check_netns(path, &file, &meta, allow_own)?;
        let inode = std::os::unix::fs::MetadataExt::ino(&meta);
        let netns = Netns {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                inode,
                file,
            }),
        };
        // Find out now, with a clear error, rather than at the first connection.
        netns.run(|| Ok(())).map_err(|source| NetnsError::Enter {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(netns)
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    pub fn inode(&self) -> u64 {
        self.inner.inode
    }

    /// The addresses of the namespace's interfaces, loopback and link-local left out: a pod's
    /// own IPs, IPv4 first.
    pub fn addresses(&self) -> io::Result<Vec<std::net::IpAddr>> {
        use nix::net::if_::InterfaceFlags;
        let mut found = self.run(|| {
            let mut out = Vec::new();
            for ifa in nix::ifaddrs::getifaddrs().map_err(io::Error::from)? {
                if ifa.flags.contains(InterfaceFlags::IFF_LOOPBACK) {
                    continue;
                }
                let Some(addr) = ifa.address else { continue };
                if let Some(v4) = addr.as_sockaddr_in() {
                    out.push(std::net::IpAddr::V4(v4.ip()));
                } else if let Some(v6) = addr.as_sockaddr_in6() {
                    if !v6.ip().is_unicast_link_local() {
                        out.push(std::net::IpAddr::V6(v6.ip()));
                    }
                }
            }
            Ok(out)
        })?;
        found.sort_by_key(|ip| ip.is_ipv6());
        found.dedup();
        Ok(found)
    }

    /// Runs `f` on this thread inside the namespace, then returns to ztunnel's own. `f` must be
    /// quick and must not block or await: nothing else runs on this thread meanwhile.
    pub fn run<T, F>(&self, f: F) -> io::Result<T>
    where
        F: FnOnce() -> io::Result<T>,
    {
        let home = home()?;
        nix::sched::setns(self.inner.file.as_fd(), CloneFlags::CLONE_NEWNET)
            .map_err(io::Error::from)?;
        let _back = Entered { home };
        f()
    }
}

// NS_GET_NSTYPE (linux/nsfs.h): the type of the namespace behind an nsfs descriptor.
nix::ioctl_none!(ns_get_nstype, 0xb7, 0x3);

/// (device, inode): a namespace's identity, whatever path or descriptor names it.
fn ns_id(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

/// A pod's netns must be a network namespace, and (unless `allow_own`) neither ztunnel's own
/// nor the host's: capture installed there would redirect the node's (or ztunnel's) own
/// traffic. The path comes from a CNI request or istio-cni, so nothing about it is taken on
/// trust.
fn check_netns(
    path: &Path,
    file: &File,
    meta: &std::fs::Metadata,
    allow_own: bool,
) -> Result<(), NetnsError> {
    use std::os::fd::AsRawFd;
    let not_netns = |detail: String| NetnsError::NotNetns {
        path: path.to_path_buf(),
        detail,
    };
    if !meta.is_file() {
        return Err(not_netns("not a namespace file".into()));
    }
    // SAFETY: `file` is an open descriptor for the whole call; NS_GET_NSTYPE takes no argument
    // and only reads the descriptor's inode.
    match unsafe { ns_get_nstype(file.as_raw_fd()) } {
        Ok(t) if t == CloneFlags::CLONE_NEWNET.bits() => {}
        Ok(t) => return Err(not_netns(format!("a namespace of type {t:#x}"))),
        Err(nix::errno::Errno::ENOTTY) => return Err(not_netns("not a namespace file".into())),
        Err(e) => return Err(not_netns(format!("asking its namespace type: {e}"))),
    }
    if allow_own {
        return Ok(());
    }
    let id = ns_id(meta);
    if home()
        .ok()
        .and_then(|f| f.metadata().ok())
        .map(|m| ns_id(&m))
        == Some(id)
    {
        return Err(NetnsError::NotAPod {
            path: path.to_path_buf(),
            whose: "ztunnel's own",
        });
    }
    // The first process's netns is the host's (or, in a pod of its own, the pod's own: ztunnel's).
    if std::fs::metadata("/proc/1/ns/net").ok().map(|m| ns_id(&m)) == Some(id) {
        return Err(NetnsError::NotAPod {
            path: path.to_path_buf(),
            whose: "the host's",
        });
    }
    Ok(())
}

impl std::fmt::Debug for Netns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Netns({})", self.inner.path.display())
    }
}
