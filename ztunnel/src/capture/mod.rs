//! Traffic capture inside a pod's network namespace: steering the pod's TCP and DNS to
//! ztunnel's in-pod listeners. Two backends behind one trait, selected per node with
//! `CAPTURE_MODE`: `ebpf` (sk_lookup + policy routing, no netfilter) and `nft` (Istio's in-pod
//! rules, netns mode). Unset (or `auto`), eBPF where the kernel and privileges allow it, else
//! nft.

pub mod ebpf;
pub mod links;
pub mod nft;
pub mod routing;
pub mod sockmap;

use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::future::BoxFuture;
use tracing::warn;

use crate::destination::Destination;
use crate::netns::Netns;

/// What a capture backend needs to know about a pod.
#[derive(Debug, Clone)]
pub struct PodNetns {
    /// Path of the pod's network namespace.
    pub netns: PathBuf,
    /// Packet mark of ztunnel's own sockets, exempt from capture.
    pub mark: u32,
    /// The pod's address.
    pub ip: IpAddr,
    /// The pod's netns, to make sockets in (netlink sockets must be made in there).
    pub worker: Netns,
    /// Whether the pod's DNS goes to ztunnel's DNS proxy.
    pub dns: bool,
}

/// The pod's in-pod listeners, for backends that hand flows to them by socket (eBPF).
/// Duplicates of the listeners' descriptors: the sockets stay open as long as this does.
#[derive(Debug)]
pub struct ListenerFds {
    pub outbound: OwnedFd,
    pub inbound_plain: OwnedFd,
    pub hbone: OwnedFd,
    /// The DNS listeners, when the DNS proxy is on.
    pub dns_tcp: Option<OwnedFd>,
    pub dns_udp: Option<OwnedFd>,
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("`{command}` in {netns} failed: {stderr}")]
    Command {
        command: String,
        netns: PathBuf,
        stderr: String,
    },
    #[error(
        "cannot run `{command}`: {source} (is it installed? setup installs nftables and iproute2)"
    )]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("policy routing in {netns}: {what}: {source}")]
    Routing {
        netns: PathBuf,
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Ebpf(#[from] ebpf::EbpfError),
}

/// A capture backend. `install` is idempotent (a restarted ztunnel re-installs over what the
/// previous process left, replacing rather than duplicating); `remove` tries every step even
/// when one fails and treats a gone netns as removed.
pub trait Capture: Send + Sync {
    /// Installs capture for a pod whose listeners are open.
    fn install<'a>(
        &'a self,
        pod: &'a PodNetns,
        listeners: &'a ListenerFds,
    ) -> BoxFuture<'a, Result<(), CaptureError>>;

    /// Removes capture (also rolls back a half-done install).
    fn remove<'a>(&'a self, pod: &'a PodNetns) -> BoxFuture<'a, Result<(), CaptureError>>;

    /// Where the listeners find a captured connection's original destination.
    fn destination(&self) -> Destination {
        Destination::Conntrack
    }

    /// For backends that would capture ztunnel's own connections to the app (those made from
    /// the client's address look like the client's): how to let them through. Asked after
    /// `install`.
    fn bypass(&self, _pod: &PodNetns) -> Option<Arc<dyn Bypass>> {
        None
    }

    /// Called once after a restart, when every pod of the state file is installed again:
    /// releases what an earlier process left for pods that did not come back.
    fn restored(&self) {}

    /// The backend's name as `CAPTURE_MODE` spells it (`nft`, `ebpf`), what `auto` resolved
    /// to; `none` where ztunnel does not capture. Reported on `/config_dump`.
    fn mode(&self) -> &'static str {
        "none"
    }
}

/// Lets one of ztunnel's connections to the app, from `source` to `port`, through capture for
/// as long as it is open (held by [`crate::sockets::CaptureException`]). Not just while it is
/// set up: the app's side may not exist yet when ztunnel's side is established (a syncookie
/// answer), and until it does each segment is looked up like a new flow.
pub trait Bypass: Send + Sync {
    fn allow(&self, source: std::net::SocketAddr, port: u16) -> std::io::Result<()>;
    fn forget(&self, source: std::net::SocketAddr, port: u16);
}

/// Where eBPF capture pins its links when no directory is configured.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/amesh/ztunnel";

/// The capture backend of a node, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptureMode {
    Nft,
    Ebpf,
    /// `CAPTURE_MODE` unset (or `auto`): eBPF where the kernel and privileges allow it, else
    /// nft (with a log line saying why).
    Auto,
    /// No capture by ztunnel (dedicated mode, or istio-cni over ZDS: someone else steers).
    None,
}

impl CaptureMode {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "" | "auto" => Ok(CaptureMode::Auto),
            "nft" | "netns" => Ok(CaptureMode::Nft),
            "ebpf" => Ok(CaptureMode::Ebpf),
            other => Err(format!(
                "CAPTURE_MODE={other:?} is not supported; use \"nft\", \"ebpf\" or \"auto\""
            )),
        }
    }

    /// [`CaptureMode::backend_with`] pinning eBPF links in [`DEFAULT_PIN_DIR`].
    pub fn backend(self) -> Result<Arc<dyn Capture>, CaptureError> {
        self.backend_with(Path::new(DEFAULT_PIN_DIR))
    }

    /// Builds the backend; for eBPF this loads the program and prepares `pin_dir` (where the
    /// pods' links are pinned), so a kernel or privilege problem shows at startup: an error
    /// with `CAPTURE_MODE=ebpf`, the fallback to nft when unset.
    pub fn backend_with(self, pin_dir: &Path) -> Result<Arc<dyn Capture>, CaptureError> {
        self.backend_with_hops(pin_dir, &sockmap::HopsConfig::default())
    }

    /// [`CaptureMode::backend_with`], eBPF capture passing the in-pod hops socket to socket as
    /// `hops` says ([`sockmap`]; nft and no capture ignore it).
    pub fn backend_with_hops(
        self,
        pin_dir: &Path,
        hops: &sockmap::HopsConfig,
    ) -> Result<Arc<dyn Capture>, CaptureError> {
        Ok(match self {
            CaptureMode::Nft => {
                // What an earlier ztunnel in eBPF mode pinned would refuse what nft redirects.
                ebpf::EbpfCapture::release_all(pin_dir);
                Arc::new(nft::NftCapture)
            }
            CaptureMode::Ebpf => Arc::new(ebpf::EbpfCapture::load_with(pin_dir, hops)?),
            CaptureMode::Auto => match ebpf::EbpfCapture::load_with(pin_dir, hops) {
                Ok(ebpf) => {
                    tracing::info!("CAPTURE_MODE unset: capturing with eBPF");
                    Arc::new(ebpf)
                }
                Err(e) => {
                    warn!(reason = %e, "CAPTURE_MODE unset and eBPF capture unavailable: capturing with nft");
                    ebpf::EbpfCapture::release_all(pin_dir);
                    Arc::new(nft::NftCapture)
                }
            },
            CaptureMode::None => Arc::new(NoCapture),
        })
    }
}

/// Capture left to someone else.
#[derive(Debug)]
pub struct NoCapture;

impl Capture for NoCapture {
    fn install<'a>(
        &'a self,
        _: &'a PodNetns,
        _: &'a ListenerFds,
    ) -> BoxFuture<'a, Result<(), CaptureError>> {
        Box::pin(async { Ok(()) })
    }

    fn remove<'a>(&'a self, _: &'a PodNetns) -> BoxFuture<'a, Result<(), CaptureError>> {
        Box::pin(async { Ok(()) })
    }
}
