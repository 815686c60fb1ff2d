//! In-pod hops without the TCP stack (eBPF capture, `AMESH_SOCKMAP`): the app → ztunnel and
//! ztunnel → app connections inside a captured pod are loopback TCP; a `sock_ops` program on
//! the cgroup v2 root puts both ends of each in a socket hash and an `sk_msg` program on that
//! hash hands every `sendmsg` on one end straight to the other end's receive queue
//! (`ebpf/src/sockmap`, the rule in [`ebpf_common::hops::joins`]). Connect, accept, FIN,
//! RST and the socket options still take the TCP stack; only the data skips it.
//!
//! Only netns listed in the pods map are touched: ztunnel adds a pod's netns cookie on ADD and
//! restore and takes it out on DEL. The programs are loaded once per node and attached
//! through a link that ztunnel holds and does not pin: when ztunnel exits they are detached
//! and the hash is freed, every socket in it back to plain TCP; the restarted ztunnel
//! attaches new ones (capture itself fails closed through the pinned `sk_lookup` links,
//! which this does not change). Connections opened before a restart stay plain TCP.
//!
//! Limits: IPv4 only (as eBPF capture); `splice(2)` cannot read bytes delivered this way (they
//! wait in a queue of their own beside the socket's receive queue), so a relay that splices
//! from a hop end must notice and copy instead (`mesh::hbone::relay_tcp` peeks before it
//! believes a socket is empty or ended).

use std::collections::HashMap;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use aya::maps::{HashMap as BpfHashMap, MapData, SockHash};
use aya::programs::{CgroupAttachMode, SkMsg, SockOps};
use aya::{Ebpf, EbpfLoader};
use ebpf_common::hops::{HopKey, HopPod, HOPS_MAP, HOP_PODS_MAP, SK_MSG_PROGRAM, SOCK_OPS_PROGRAM};
use tracing::{debug, info};

use super::ebpf::take_map;

use crate::netns::Netns;

/// The programs' object built by `build.rs` from `ebpf/src/sockmap`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/amesh-hops"));

/// `SO_NETNS_COOKIE` (Linux 5.14): the cookie the programs read with `bpf_get_netns_cookie`.
const SO_NETNS_COOKIE: libc::c_int = 71;

/// Whether ztunnel passes the in-pod hops socket to socket (`AMESH_SOCKMAP`), in eBPF capture
/// mode only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HopsSetting {
    /// `on`: attach the programs; if the kernel refuses them, capture goes on without
    /// (logged once, with the reason).
    On,
    /// `off`: every hop is plain TCP.
    Off,
}

impl HopsSetting {
    /// The setting when `AMESH_SOCKMAP` is unset.
    pub const DEFAULT: HopsSetting = HopsSetting::Off;

    pub fn parse(s: &str) -> Result<HopsSetting, String> {
        match s {
            "" => Ok(HopsSetting::DEFAULT),
            "on" | "true" | "1" => Ok(HopsSetting::On),
            "off" | "false" | "0" => Ok(HopsSetting::Off),
            other => Err(format!("AMESH_SOCKMAP={other:?}: use \"on\" or \"off\"")),
        }
    }
}

/// How eBPF capture treats the in-pod hops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HopsConfig {
    pub setting: HopsSetting,
    /// The cgroup v2 directory the `sock_ops` program is attached to (`AMESH_CGROUP_PATH`);
    /// unset: the cgroup2 mount of ztunnel's mount namespace, which must be the host's root
    /// (the programs see only sockets of processes in the cgroup's subtree).
    pub cgroup: Option<PathBuf>,
}

impl Default for HopsConfig {
    fn default() -> HopsConfig {
        HopsConfig {
            setting: HopsSetting::DEFAULT,
            cgroup: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HopsError {
    #[error(
        "no cgroup2 filesystem in /proc/self/mountinfo (mount the host's cgroup v2 root and set \
         AMESH_CGROUP_PATH to it)"
    )]
    NoCgroup2,
    #[error("opening the cgroup {}: {source} (AMESH_CGROUP_PATH)", path.display())]
    Cgroup { path: PathBuf, source: io::Error },
    #[error(
        "{what}: {cause} (kernel 5.15 or later with CONFIG_BPF_STREAM_PARSER / sockmap \
             support and CAP_BPF + CAP_NET_ADMIN are needed; AMESH_SOCKMAP=off turns this off)"
    )]
    Load {
        what: &'static str,
        cause: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// The node's loaded and attached hop programs and their maps.
pub struct Hops {
    /// Captured pods (netns cookie → [`HopPod`]) and the cookie of each by netns inode, so a
    /// DEL after the netns is gone still finds it.
    pods: parking_lot::Mutex<Pods>,
    /// The hop ends (read by [`Hops::ends`]).
    hops: SockHash<MapData, [u8; 24]>,
    cgroup: PathBuf,
    /// Owns the programs and the cgroup link; dropping it detaches them.
    _ebpf: Ebpf,
}

struct Pods {
    map: BpfHashMap<MapData, u64, [u8; 8]>,
    cookies: HashMap<u64, u64>,
}

impl std::fmt::Debug for Hops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hops")
            .field("cgroup", &self.cgroup)
            .field("pods", &self.pods.lock().cookies.len())
            .finish()
    }
}

impl Hops {
    /// Loads the programs and attaches them: `sock_ops` to `cgroup` (else the cgroup2 mount),
    /// `sk_msg` to the hop hash.
    pub fn load(cgroup: Option<&Path>) -> Result<Hops, HopsError> {
        let cgroup = match cgroup {
            Some(c) => c.to_path_buf(),
            None => {
                let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
                cgroup2_mount(&info).ok_or(HopsError::NoCgroup2)?
            }
        };
        let dir = std::fs::File::open(&cgroup).map_err(|source| HopsError::Cgroup {
            path: cgroup.clone(),
            source,
        })?;
        let fail =
            |what, cause: Box<dyn std::error::Error + Send + Sync>| HopsError::Load { what, cause };
        let mut ebpf = EbpfLoader::new()
            .load(OBJECT)
            .map_err(|e| fail("loading the hop programs' object", e.into()))?;
        let hops: SockHash<MapData, [u8; 24]> =
            take_map(&mut ebpf, HOPS_MAP, "opening the hop map").map_err(|(w, e)| fail(w, e))?;
        let pods: BpfHashMap<MapData, u64, [u8; 8]> =
            take_map(&mut ebpf, HOP_PODS_MAP, "opening the pods map")
                .map_err(|(w, e)| fail(w, e))?;
        let msg: &mut SkMsg = ebpf
            .program_mut(SK_MSG_PROGRAM)
            .ok_or_else(|| fail("finding the sk_msg program", "not in the object".into()))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| {
                fail("finding the sk_msg program", e.into())
            })?;
        msg.load()
            .map_err(|e| fail("loading the sk_msg program", e.into()))?;
        let map_fd = hops
            .fd()
            .try_clone()
            .map_err(|e| fail("opening the hop map", e.into()))?;
        msg.attach(&map_fd)
            .map_err(|e| fail("attaching the sk_msg program to the hop map", e.into()))?;
        let ops: &mut SockOps = ebpf
            .program_mut(SOCK_OPS_PROGRAM)
            .ok_or_else(|| fail("finding the sock_ops program", "not in the object".into()))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| {
                fail("finding the sock_ops program", e.into())
            })?;
        ops.load()
            .map_err(|e| fail("loading the sock_ops program", e.into()))?;
        // A link: it coexists with every other program on the cgroup (other ztunnels' on the
        // same machine included) and goes with ztunnel.
        ops.attach(&dir, CgroupAttachMode::Single)
            .map_err(|e| fail("attaching the sock_ops program to the cgroup", e.into()))?;
        info!(cgroup = %cgroup.display(), "in-pod hops pass socket to socket (SOCKMAP)");
        Ok(Hops {
            pods: parking_lot::Mutex::new(Pods {
                map: pods,
                cookies: HashMap::new(),
            }),
            hops,
            cgroup,
            _ebpf: ebpf,
        })
    }

    /// Starts accelerating the hops of the pod whose netns is `netns` (idempotent).
    pub fn add(&self, netns: &Netns, ip: Ipv4Addr, mark: u32) -> io::Result<()> {
        let cookie = netns_cookie(netns)?;
        let pod = HopPod {
            ip4: u32::from_ne_bytes(ip.octets()),
            mark,
        };
        let mut pods = self.pods.lock();
        pods.map
            .insert(cookie, pod.to_bytes(), 0)
            .map_err(io::Error::other)?;
        pods.cookies.insert(netns.inode(), cookie);
        debug!(
            netns_inode = netns.inode(),
            cookie, "in-pod hops accelerated"
        );
        Ok(())
    }

    /// Stops adding the pod's new connections to the hash (those in it stay until they close).
    pub fn remove(&self, netns_inode: u64) {
        let mut pods = self.pods.lock();
        if let Some(cookie) = pods.cookies.remove(&netns_inode) {
            let _ = pods.map.remove(&cookie);
        }
    }

    /// The hop ends now in the hash.
    pub fn ends(&self) -> Vec<HopKey> {
        self.hops
            .keys()
            .filter_map(Result::ok)
            .map(|b| from_bytes(&b))
            .collect()
    }

    /// The cgroup the `sock_ops` program is attached to.
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }
}

fn from_bytes(b: &[u8; 24]) -> HopKey {
    let u32_at = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let mut cookie = [0u8; 8];
    cookie.copy_from_slice(&b[0..8]);
    HopKey {
        netns_cookie: u64::from_ne_bytes(cookie),
        local_ip4: u32_at(8),
        remote_ip4: u32_at(12),
        local_port: u32_at(16),
        remote_port: u32_at(20),
    }
}

/// The cookie of `netns`, as `bpf_get_netns_cookie` gives it to the programs.
pub fn netns_cookie(netns: &Netns) -> io::Result<u64> {
    let socket = netns.run(|| std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)))?;
    socket_netns_cookie(&socket)
}

/// The netns cookie of the netns `socket` was made in.
pub fn socket_netns_cookie(socket: &impl AsRawFd) -> io::Result<u64> {
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: the buffer and its length are valid for the call; the kernel writes at most
    // `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// The mount point of the first cgroup2 filesystem in a `/proc/self/mountinfo` text.
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // Fields: id parent major:minor root mount-point options [optional...] - fstype ...
        let (before, after) = line.split_once(" - ")?;
        if after.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let point = before.split_whitespace().nth(4)?;
        // mountinfo escapes space, tab, newline and backslash as octal.
        Some(PathBuf::from(unescape(point)))
    })
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 4);
        match code.and_then(|c| u8::from_str_radix(c, 8).ok()) {
            Some(b) => {
                out.push(char::from(b));
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup2_mount_is_found_among_others() {
        let info = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:26 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
41 30 0:38 / /sys/fs/cgroup/unified rw,relatime shared:10 - cgroup2 cgroup2 rw
42 30 0:39 / /sys/fs/cgroup/cpu rw,relatime shared:11 - cgroup cgroup rw,cpu
";
        assert_eq!(
            cgroup2_mount(info),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(cgroup2_mount("22 1 8:1 / / rw - ext4 /dev/sda1 rw\n"), None);
        assert_eq!(cgroup2_mount("garbage\n\n - \n"), None);
    }

    #[test]
    fn escaped_mount_points_are_unescaped() {
        let info = "41 30 0:38 / /host/cg\\040root rw - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(info), Some(PathBuf::from("/host/cg root")));
        assert_eq!(unescape("a\\9"), "a\\9");
    }

    #[test]
    fn the_setting_parses() {
        assert_eq!(HopsSetting::parse("on"), Ok(HopsSetting::On));
        assert_eq!(HopsSetting::parse("off"), Ok(HopsSetting::Off));
        assert_eq!(HopsSetting::parse(""), Ok(HopsSetting::DEFAULT));
        assert!(HopsSetting::parse("yes please").is_err());
    }
}
