//! eBPF capture (`CAPTURE_MODE=ebpf`): no netfilter in the pod. Policy routing
//! ([`super::routing`]) makes the pod's outbound TCP and DNS local, and an `sk_lookup` program
//! (`ebpf/`) attached to the pod's netns hands every new flow to the right in-pod listener from
//! a SOCKMAP. The accepted socket's local address is the original destination: no NAT, no
//! conntrack.
//!
//! One program instance and one map per pod, with the pod's address in the instance's
//! read-only globals. A single instance for the node would need to know which pod's netns a
//! lookup runs in, and the kernel does not tell sk_lookup programs that (it refuses
//! `bpf_get_netns_cookie` for this program type); the flow's addresses alone are ambiguous
//! between two pods of the node (ztunnel's spoofed-source connection into pod B looks exactly
//! like pod A's outbound connection to B). The object is parsed and verified once at startup
//! (a clear error there when the kernel or the privileges fall short); each pod then costs a
//! load of a few dozen instructions, a five-entry map and a link, all freed with it.
//!
//! Each pod's link is pinned in bpffs ([`super::links`]), so it outlives ztunnel: while no
//! ztunnel runs, the program stays attached and, its listeners gone from the socket map,
//! refuses every flow it would capture (the app is never reached uncaptured). The restarted
//! ztunnel loads a new instance, fills its map with the new listeners and swaps it into the
//! pod's link in one step; pins of pods that did not come back are released once the restored
//! pods are in ([`EbpfCapture::release_unclaimed`]), and a DEL detaches and unpins.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aya::maps::{HashMap as BpfHashMap, MapData, SockMap};
use aya::programs::SkLookup;
use aya::{Ebpf, EbpfLoader};
use ebpf_common::{
    slot, BypassKey, BYPASS_MAP, DNS_GLOBAL, LISTENERS_MAP, POD_IP4_GLOBAL, PROBE_IP4_GLOBAL,
    PROGRAM,
};
use futures::future::BoxFuture;
use tracing::{debug, info, warn};

use super::links::{self, PinDir};
use super::sockmap::{Hops, HopsConfig, HopsSetting};
use super::{routing, Bypass, Capture, CaptureError, ListenerFds, PodNetns};
use crate::destination::Destination;

/// The program object built by `build.rs` from `ebpf/`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/amesh-capture"));

/// Source address of kubelet probes (as Istio's, SNATed by the CNI).
pub const PROBE_SOURCE: Ipv4Addr = Ipv4Addr::new(169, 254, 7, 127);

// Causes are part of each message (and not error sources, which would print them twice).
#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    #[error("CAPTURE_MODE=ebpf: {what} failed: {cause} ({hint})")]
    Load {
        what: &'static str,
        cause: Box<dyn std::error::Error + Send + Sync>,
        hint: String,
    },
    #[error("CAPTURE_MODE=ebpf captures IPv4 pods only; this pod's address is {0}")]
    NotIpv4(IpAddr),
    #[error("eBPF capture of {netns}: {what}: {cause}")]
    Pod {
        netns: PathBuf,
        what: &'static str,
        cause: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// The pods' program instances.
pub struct EbpfCapture {
    /// By netns inode.
    pods: parking_lot::Mutex<HashMap<u64, PodProgram>>,
    /// Where the pods' links are pinned.
    pins: PinDir,
    /// The in-pod hops passed socket to socket (`AMESH_SOCKMAP=on` and the kernel took the
    /// programs), else `None`: plain TCP.
    hops: Option<Hops>,
}

/// One pod's program instance, map and link. The link is pinned: dropping this closes
/// ztunnel's descriptors but leaves the program attached (a DEL detaches it explicitly).
struct PodProgram {
    listeners: SockMap<MapData>,
    /// Shared with the pod's socket factory; emptied (the map closed) when the pod goes.
    bypass: Arc<BypassMap>,
    /// The pod's netns link (also pinned).
    link: OwnedFd,
    /// Owns the program (the link holds it too).
    _ebpf: Ebpf,
}

impl std::fmt::Debug for EbpfCapture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EbpfCapture")
            .field("pods", &self.pods.lock().len())
            .finish()
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A pod's bypass map (see [`ebpf_common::BypassKey`]).
struct BypassMap {
    map: parking_lot::Mutex<Option<BpfHashMap<MapData, [u8; 12], u8>>>,
}

fn bypass_key(source: SocketAddr, port: u16) -> Option<[u8; 12]> {
    let SocketAddr::V4(source) = source else {
        return None;
    };
    Some(
        BypassKey {
            remote_ip4: u32::from_ne_bytes(source.ip().octets()),
            remote_port: source.port().to_be(),
            pad: 0,
            local_port: u32::from(port),
        }
        .to_bytes(),
    )
}

impl Bypass for BypassMap {
    fn allow(&self, source: SocketAddr, port: u16) -> std::io::Result<()> {
        let mut map = self.map.lock();
        match (bypass_key(source, port), map.as_mut()) {
            (Some(key), Some(map)) => map.insert(key, 1, 0).map_err(std::io::Error::other),
            // IPv6, or the pod is being released.
            _ => Ok(()),
        }
    }

    fn forget(&self, source: SocketAddr, port: u16) {
        let mut map = self.map.lock();
        if let (Some(key), Some(map)) = (bypass_key(source, port), map.as_mut()) {
            let _ = map.remove(&key);
        }
    }
}

/// An instance of the program for one pod, loaded, with its maps.
struct Instance {
    ebpf: Ebpf,
    listeners: SockMap<MapData>,
    bypass: BpfHashMap<MapData, [u8; 12], u8>,
}

/// Takes map `name` out of a loaded object, typed (`what`: the step named in errors). Shared by
/// the capture program's loader and the hop programs' (`capture::sockmap`).
pub(super) fn take_map<T>(
    ebpf: &mut Ebpf,
    name: &str,
    what: &'static str,
) -> Result<T, (&'static str, BoxError)>
where
    T: TryFrom<aya::maps::Map>,
    T::Error: std::error::Error + Send + Sync + 'static,
{
    let map = ebpf
        .take_map(name)
        .ok_or((what, format!("map {name} is not in the object").into()))?;
    T::try_from(map).map_err(|e| (what, e.into()))
}

/// Loads an instance of the program for a pod at `pod_ip` (errors name the step).
fn load_instance(pod_ip: Ipv4Addr, dns: bool) -> Result<Instance, (&'static str, BoxError)> {
    let ip4 = u32::from_ne_bytes(pod_ip.octets());
    let probe4 = u32::from_ne_bytes(PROBE_SOURCE.octets());
    let dns = u32::from(dns);
    let mut ebpf = EbpfLoader::new()
        .override_global(POD_IP4_GLOBAL, &ip4, true)
        .override_global(PROBE_IP4_GLOBAL, &probe4, true)
        .override_global(DNS_GLOBAL, &dns, true)
        .load(OBJECT)
        .map_err(|e| ("loading the object", e.into()))?;
    program(&mut ebpf)
        .map_err(|e| ("finding the program", e))?
        .load()
        .map_err(|e| ("loading the sk_lookup program", e.into()))?;
    let listeners = take_map(&mut ebpf, LISTENERS_MAP, "opening the listeners map")?;
    let bypass = take_map(&mut ebpf, BYPASS_MAP, "opening the bypass map")?;
    Ok(Instance {
        ebpf,
        listeners,
        bypass,
    })
}

impl EbpfCapture {
    /// Checks that the kernel takes the program (loads one instance and attaches it to a
    /// scratch netns) and that links can be pinned in `pin_dir` (mounting bpffs at
    /// `/sys/fs/bpf` when nothing is mounted there). Fails with what the kernel or the process
    /// lacks.
    pub fn load(pin_dir: &Path) -> Result<EbpfCapture, EbpfError> {
        EbpfCapture::load_with(pin_dir, &HopsConfig::default())
    }

    /// [`EbpfCapture::load`], and with `hops` on, the in-pod hop programs
    /// ([`super::sockmap`]); if the kernel refuses those, capture goes on without them and says
    /// why once.
    pub fn load_with(pin_dir: &Path, hops: &HopsConfig) -> Result<EbpfCapture, EbpfError> {
        let fail = |what, cause| EbpfError::Load {
            what,
            cause,
            hint: diagnose(),
        };
        let mut probe =
            load_instance(Ipv4Addr::UNSPECIFIED, true).map_err(|(what, e)| fail(what, e))?;
        let prog = program(&mut probe.ebpf).map_err(|e| fail("finding the program", e))?;
        let prog = prog
            .fd()
            .map_err(|e| fail("finding the program", e.into()))?;
        probe_attach(prog.as_fd()).map_err(|e| fail("attaching to a scratch netns", e))?;
        let pins = PinDir::open(pin_dir).map_err(|e| EbpfError::Load {
            what: "preparing the pin directory",
            cause: format!("{}: {e}", pin_dir.display()).into(),
            hint: "ztunnel pins each pod's sk_lookup link there so capture fails closed while \
                   it restarts"
                .into(),
        })?;
        info!(pins = %pins.path().display(), "eBPF capture program verified by the kernel");
        let hops = match hops.setting {
            HopsSetting::Off => None,
            HopsSetting::On => match Hops::load(hops.cgroup.as_deref()) {
                Ok(h) => Some(h),
                Err(e) => {
                    warn!(reason = %e, "AMESH_SOCKMAP=on but the in-pod hops stay plain TCP");
                    None
                }
            },
        };
        Ok(EbpfCapture {
            pods: parking_lot::Mutex::new(HashMap::new()),
            pins,
            hops,
        })
    }

    /// Where the pods' links are pinned.
    pub fn pin_dir(&self) -> &Path {
        self.pins.path()
    }

    /// After a restart, once every pod of the state file is installed again: releases the
    /// links an earlier ztunnel pinned for pods that did not come back (deleted while no
    /// ztunnel ran, or failing to restore), and the pins of netns that are gone. Returns how
    /// many pins were released.
    pub fn release_unclaimed(&self) -> usize {
        let pinned = match self.pins.pinned() {
            Ok(p) => p,
            Err(e) => {
                warn!(dir = %self.pins.path().display(), error = %e, "cannot list pinned links");
                return 0;
            }
        };
        let claimed: Vec<u64> = self.pods.lock().keys().copied().collect();
        let mut released = 0;
        for ino in pinned.into_iter().filter(|i| !claimed.contains(i)) {
            let path = self.pins.pin_path(ino);
            // Detached first, so that whoever else may hold the link, the pod is left as
            // without the mesh; then the pin, the last reference, goes.
            if let Ok(link) = PinDir::open_pin(&path) {
                if let Err(e) = links::detach(link.as_fd()) {
                    warn!(pin = %path.display(), error = %e, "detaching a stale link failed");
                }
            }
            match self.pins.unpin(ino) {
                Ok(()) => released += 1,
                Err(e) => warn!(pin = %path.display(), error = %e, "removing a stale pin failed"),
            }
        }
        if released > 0 {
            info!(
                released,
                "released the pinned links of pods no longer captured"
            );
        }
        released
    }

    /// Detaches and removes every link pinned in `pin_dir`, for a ztunnel that captures with
    /// nft after one that captured with eBPF: a pinned program whose listeners are gone would
    /// refuse every flow nft redirects. Nothing to do when the directory does not exist.
    pub fn release_all(pin_dir: &Path) -> usize {
        let Ok(pins) = PinDir::existing(pin_dir) else {
            return 0;
        };
        let capture = EbpfCapture {
            pods: parking_lot::Mutex::new(HashMap::new()),
            pins,
            hops: None,
        };
        capture.release_unclaimed()
    }

    /// The in-pod hop programs, when they are on.
    pub fn hops(&self) -> Option<&Hops> {
        self.hops.as_ref()
    }

    /// Number of pods whose netns has the program attached.
    pub fn attached(&self) -> usize {
        self.pods.lock().len()
    }

    async fn install(&self, pod: &PodNetns, fds: &ListenerFds) -> Result<(), CaptureError> {
        let ip = match pod.ip {
            IpAddr::V4(ip) => ip,
            other => return Err(EbpfError::NotIpv4(other).into()),
        };
        let fail = |what: &'static str, cause: BoxError| EbpfError::Pod {
            netns: pod.netns.clone(),
            what,
            cause,
        };
        let netns: File = pod
            .worker
            .run(|| File::open("/proc/thread-self/ns/net"))
            .map_err(|e| fail("opening the netns", e.into()))?;
        let inode = pod.worker.inode();
        {
            let mut pods = self.pods.lock();
            let entry = match pods.entry(inode) {
                Entry::Occupied(e) => Some(e.into_mut()),
                Entry::Vacant(v) => {
                    let Instance {
                        mut ebpf,
                        mut listeners,
                        bypass,
                    } = load_instance(ip, pod.dns).map_err(|(what, e)| fail(what, e))?;
                    // Filled before the program serves: it may replace a live one at once.
                    fill(&mut listeners, fds).map_err(|e| fail("filling the socket map", e))?;
                    let program = program(&mut ebpf).map_err(|e| fail("finding the program", e))?;
                    let prog = program
                        .fd()
                        .map_err(|e| fail("finding the program", e.into()))?
                        .as_fd();
                    let link = take_over(prog, netns.as_fd(), inode)
                        .map_err(|e| fail("attaching the sk_lookup program", e.into()))?;
                    self.pins
                        .pin(link.as_fd(), inode)
                        .map_err(|e| fail("pinning the sk_lookup link", e.into()))?;
                    v.insert(PodProgram {
                        listeners,
                        bypass: Arc::new(BypassMap {
                            map: parking_lot::Mutex::new(Some(bypass)),
                        }),
                        link,
                        _ebpf: ebpf,
                    });
                    None
                }
            };
            // A repeated ADD refreshes the listeners of the instance it has.
            if let Some(entry) = entry {
                fill(&mut entry.listeners, fds).map_err(|e| fail("filling the socket map", e))?;
            }
        }
        if let Some(hops) = &self.hops {
            // Not fatal: without it the pod's hops are plain TCP.
            if let Err(e) = hops.add(&pod.worker, ip, pod.mark) {
                warn!(netns = %pod.netns.display(), error = %e, "in-pod hops stay plain TCP");
            }
        }
        // Rules last: until the program is attached, a flow made local would find no one.
        routing::install(pod, ip, routing::rules(pod.mark, PROBE_SOURCE, pod.dns)).await?;
        debug!(netns = %pod.netns.display(), "eBPF capture installed");
        Ok(())
    }

    async fn remove(&self, pod: &PodNetns) -> Result<(), CaptureError> {
        // Detaches the program and frees it and its maps (the bypass map too, though the pod's
        // socket factory may outlive this while its connections finish), then its pin, also
        // one an earlier ztunnel left when this one never installed the pod.
        let inode = pod.worker.inode();
        if let Some(hops) = &self.hops {
            hops.remove(inode);
        }
        if let Some(program) = self.pods.lock().remove(&inode) {
            program.bypass.map.lock().take();
            if let Err(e) = links::detach(program.link.as_fd()) {
                warn!(netns = %pod.netns.display(), error = %e, "detaching the sk_lookup link failed");
            }
        } else if let Ok(link) = PinDir::open_pin(&self.pins.pin_path(inode)) {
            let _ = links::detach(link.as_fd());
        }
        self.pins.unpin(inode).map_err(|e| EbpfError::Pod {
            netns: pod.netns.clone(),
            what: "removing the pinned link",
            cause: e.into(),
        })?;
        // A netns that is gone took its rules and routes with it.
        if pod.netns.exists() {
            routing::remove(pod).await?;
        }
        Ok(())
    }
}

impl Capture for EbpfCapture {
    fn mode(&self) -> &'static str {
        "ebpf"
    }

    fn install<'a>(
        &'a self,
        pod: &'a PodNetns,
        listeners: &'a ListenerFds,
    ) -> BoxFuture<'a, Result<(), CaptureError>> {
        Box::pin(EbpfCapture::install(self, pod, listeners))
    }

    fn remove<'a>(&'a self, pod: &'a PodNetns) -> BoxFuture<'a, Result<(), CaptureError>> {
        Box::pin(EbpfCapture::remove(self, pod))
    }

    /// sk_lookup hands the flow over unchanged.
    fn destination(&self) -> Destination {
        Destination::LocalAddress
    }

    fn bypass(&self, pod: &PodNetns) -> Option<Arc<dyn Bypass>> {
        let pods = self.pods.lock();
        let program = pods.get(&pod.worker.inode())?;
        Some(program.bypass.clone())
    }

    fn restored(&self) {
        self.release_unclaimed();
    }
}

/// Puts the pod's listeners in the program's socket map.
fn fill(map: &mut SockMap<MapData>, fds: &ListenerFds) -> Result<(), BoxError> {
    let dns = [
        (slot::DNS_TCP, fds.dns_tcp.as_ref()),
        (slot::DNS_UDP, fds.dns_udp.as_ref()),
    ];
    let dns = dns
        .into_iter()
        .filter_map(|(slot, fd)| fd.map(|fd| (slot, fd)));
    for (slot, fd) in [
        (slot::OUTBOUND, &fds.outbound),
        (slot::INBOUND_PLAIN, &fds.inbound_plain),
        (slot::HBONE, &fds.hbone),
    ]
    .into_iter()
    .chain(dns)
    {
        map.set(slot, &fd.as_raw_fd(), 0)?;
    }
    Ok(())
}

/// Attaches `prog` to the netns: into the link an earlier ztunnel left there (found through the
/// kernel, pinned or not), swapped in one step, or else as a new link. Any further links of
/// ours on the netns are detached, since one of them, its listeners gone, would refuse every
/// captured flow (the kernel drops a flow when any program says so).
fn take_over(
    prog: std::os::fd::BorrowedFd<'_>,
    netns: std::os::fd::BorrowedFd<'_>,
    inode: u64,
) -> std::io::Result<OwnedFd> {
    let mut old = links::find(PROGRAM, inode)?.into_iter();
    let Some(link) = old.next() else {
        return links::create(prog, netns);
    };
    links::update(link.as_fd(), prog)?;
    for extra in old {
        links::detach(extra.as_fd())?;
    }
    info!(
        netns_inode = inode,
        "took over the sk_lookup link a previous ztunnel left"
    );
    Ok(link)
}

/// Attaches `prog` to a new, empty netns and detaches it: the kernel takes sk_lookup links.
fn probe_attach(prog: std::os::fd::BorrowedFd<'_>) -> Result<(), BoxError> {
    std::thread::scope(|s| {
        s.spawn(|| -> Result<(), BoxError> {
            // Only this thread moves to the scratch netns; it is freed when the thread ends.
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?;
            let netns = File::open("/proc/thread-self/ns/net")?;
            let link = links::create(prog, netns.as_fd())?;
            links::detach(link.as_fd())?;
            Ok(())
        })
        .join()
        .unwrap_or_else(|_| Err("the probe thread panicked".into()))
    })
}

fn program(ebpf: &mut Ebpf) -> Result<&mut SkLookup, BoxError> {
    let program = ebpf
        .program_mut(PROGRAM)
        .ok_or("the object has no sk_lookup program")?;
    Ok(program.try_into()?)
}

/// What the kernel and the process lack, for a load error: the usual reasons are an old
/// kernel (sk_lookup is Linux 5.9), or missing privileges.
fn diagnose() -> String {
    let mut facts = Vec::new();
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into());
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse::<u32>().ok());
    if let (Some(major), Some(minor)) = (numbers.next(), numbers.next()) {
        if (major, minor) < (5, 9) {
            facts.push(format!(
                "kernel {release} is older than 5.9, which sk_lookup programs need"
            ));
        }
    }
    if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        facts.push("the kernel has no BTF (/sys/kernel/btf/vmlinux is missing)".into());
    }
    if !nix::unistd::geteuid().is_root() {
        facts.push("ztunnel is not root: it needs CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN".into());
    } else if let Some(missing) = missing_capabilities() {
        facts.push(format!("ztunnel lacks {missing}"));
    }
    if facts.is_empty() {
        facts.push(format!(
            "kernel {release} with BTF, and the needed capabilities are there"
        ));
    }
    facts.join("; ")
}

/// Capabilities eBPF capture needs that the effective set lacks (from /proc/self/status).
fn missing_capabilities() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())?;
    let needed = [
        (21, "CAP_SYS_ADMIN"),
        (12, "CAP_NET_ADMIN"),
        (39, "CAP_BPF"),
    ];
    let missing: Vec<&str> = needed
        .iter()
        .filter(|(bit, _)| eff & (1u64 << bit) == 0)
        .map(|(_, name)| *name)
        .collect();
    (!missing.is_empty()).then(|| missing.join(", "))
}
