//! ZDS client: takes pods from Istio's istio-cni node agent, as Istio's ztunnel does, instead
//! of from amesh-cni.
//!
//! ztunnel connects to istio-cni's unix `SOCK_SEQPACKET` socket (`INPOD_UDS`) and sends
//! `ZdsHello`; istio-cni then replays every pod (`add`, each with the pod's netns as one
//! SCM_RIGHTS file descriptor), sends `SnapshotSent`, and streams changes. Every request gets an
//! `Ack` (empty error on success). After the snapshot, pods that were not replayed are released.
//! When the socket goes away, pods keep running and ztunnel reconnects with backoff.
//!
//! istio-cni installs the in-pod redirection itself, so ztunnel only opens the listeners (run
//! with [`CaptureMode::None`](crate::capture::CaptureMode)). The netns fd is held for as long as
//! the pod is captured and the pod's netns path is `/proc/<ztunnel pid>/fd/<n>`, which child
//! processes (`nsenter`) can open too. Nothing is persisted: after a restart istio-cni replays.
//!
//! The wire part ([`decode_request`], [`encode_hello`], [`encode_ack`]) is sans-IO; the socket
//! part is a thin loop around it.

use std::collections::{HashMap, HashSet};
use std::io::{self, IoSlice, IoSliceMut};
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use amesh_proto::istio::workload::zds::{
    workload_request, workload_response, Ack, Version, WorkloadRequest, WorkloadResponse, ZdsHello,
};
use nix::sys::socket::{
    self as sock, AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr,
};
use prost::Message;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::netns::{Netns, NetnsError};
use crate::pods::{AddPod, PodManager};
use crate::proxy::Shared;

/// Istio's default path of istio-cni's ZDS socket.
pub const DEFAULT_SOCKET: &str = "/var/run/ztunnel/ztunnel.sock";
/// Largest request we accept: real ones are a few hundred bytes.
const MAX_PACKET: usize = 16 << 10;
/// Room for the most descriptors one message can carry (the kernel's SCM_MAX_FD), so control
/// data is never truncated and every received descriptor is seen, owned and closed.
const MAX_FDS: usize = 253;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Why a request is refused (the text goes back to istio-cni in the Ack).
#[derive(Debug, thiserror::Error)]
pub enum ZdsError {
    #[error("request larger than {MAX_PACKET} bytes")]
    TooLarge,
    #[error("malformed WorkloadRequest: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("WorkloadRequest without a known payload (is istio-cni newer than this ztunnel?)")]
    NoPayload,
    #[error("{0} without a uid")]
    NoUid(&'static str),
    #[error("add for pod {0} lacks workload_info (name and namespace)")]
    NoWorkloadInfo(String),
    #[error(
        "add for pod {uid} carried {count} file descriptors; expected exactly one, the pod netns"
    )]
    AddFds { uid: String, count: usize },
    #[error("{kind} carried {count} file descriptors; only add may carry one")]
    UnexpectedFds { kind: &'static str, count: usize },
}

/// One request from istio-cni, checked.
#[derive(Debug)]
pub enum Request {
    /// Serve this pod; `netns` is its network namespace.
    Add {
        uid: String,
        name: String,
        namespace: String,
        service_account: String,
        netns: OwnedFd,
    },
    /// During the replay: this already-served pod still exists.
    Keep { uid: String },
    /// Stop serving this pod.
    Del { uid: String },
    /// The replay is complete.
    SnapshotSent,
}

/// Parses one packet and the descriptors that came with it. Descriptors not taken by the
/// returned request are closed (dropped) here, also on error.
pub fn decode_request(
    packet: &[u8],
    truncated: bool,
    mut fds: Vec<OwnedFd>,
) -> Result<Request, ZdsError> {
    if truncated {
        return Err(ZdsError::TooLarge);
    }
    let req = WorkloadRequest::decode(packet)?;
    let no_fds = |kind: &'static str, fds: &[OwnedFd]| match fds.len() {
        0 => Ok(()),
        count => Err(ZdsError::UnexpectedFds { kind, count }),
    };
    match req.payload.ok_or(ZdsError::NoPayload)? {
        workload_request::Payload::Add(add) => {
            if add.uid.is_empty() {
                return Err(ZdsError::NoUid("add"));
            }
            let info = add
                .workload_info
                .filter(|i| !i.name.is_empty() && !i.namespace.is_empty())
                .ok_or_else(|| ZdsError::NoWorkloadInfo(add.uid.clone()))?;
            if fds.len() != 1 {
                return Err(ZdsError::AddFds {
                    uid: add.uid,
                    count: fds.len(),
                });
            }
            let netns = fds.remove(0);
            Ok(Request::Add {
                uid: add.uid,
                name: info.name,
                namespace: info.namespace,
                service_account: info.service_account,
                netns,
            })
        }
        workload_request::Payload::Keep(keep) => {
            no_fds("keep", &fds)?;
            match keep.uid.is_empty() {
                true => Err(ZdsError::NoUid("keep")),
                false => Ok(Request::Keep { uid: keep.uid }),
            }
        }
        workload_request::Payload::Del(del) => {
            no_fds("del", &fds)?;
            match del.uid.is_empty() {
                true => Err(ZdsError::NoUid("del")),
                false => Ok(Request::Del { uid: del.uid }),
            }
        }
        workload_request::Payload::SnapshotSent(_) => {
            no_fds("snapshot_sent", &fds)?;
            Ok(Request::SnapshotSent)
        }
    }
}

/// The first message ztunnel sends.
pub fn encode_hello() -> Vec<u8> {
    ZdsHello {
        version: Version::V1 as i32,
    }
    .encode_to_vec()
}

/// The answer to one request: `error` is empty on success.
pub fn encode_ack(error: &str) -> Vec<u8> {
    WorkloadResponse {
        payload: Some(workload_response::Payload::Ack(Ack {
            error: error.to_string(),
        })),
    }
    .encode_to_vec()
}

/// The running client. Dropping it stops the client (captured pods stay captured).
pub struct ZdsHandle {
    synced: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl ZdsHandle {
    /// Resolves once istio-cni's first snapshot was applied (every pod it knows is served).
    pub async fn wait_synced(&mut self) {
        // An error means the client task ended, which it only does when aborted.
        let _ = self.synced.wait_for(|s| *s).await;
    }
}

impl Drop for ZdsHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the client on `socket`. Must run inside a Tokio runtime.
pub fn spawn(socket: PathBuf, shared: Arc<Shared>, pods: Arc<PodManager>) -> ZdsHandle {
    let (synced_tx, synced) = watch::channel(false);
    let client = Client {
        shared,
        pods,
        held: HashMap::new(),
        replay: None,
        synced: synced_tx,
    };
    let task = tokio::spawn(client.run(socket));
    ZdsHandle { synced, task }
}

/// A pod netns descriptor held while the pod is captured.
struct Held {
    /// Never read: holding it keeps `/proc/<pid>/fd/<n>` valid for the pod's life.
    _fd: OwnedFd,
    /// (device, inode): the same netns under a new descriptor after istio-cni reconnects.
    id: (u64, u64),
}

struct Client {
    shared: Arc<Shared>,
    pods: Arc<PodManager>,
    /// Netns descriptors of captured pods, by uid; closed when the pod is released.
    held: HashMap<String, Held>,
    /// Uids replayed on the current connection, until `SnapshotSent` (`None` afterwards).
    replay: Option<HashSet<String>>,
    synced: watch::Sender<bool>,
}

impl Client {
    async fn run(mut self, socket: PathBuf) {
        let mut backoff = BACKOFF_MIN;
        let mut reported = false;
        loop {
            match Conn::connect(&socket) {
                Ok(conn) => {
                    info!(socket = %socket.display(), "connected to istio-cni (ZDS)");
                    reported = false;
                    backoff = BACKOFF_MIN;
                    match self.serve(&conn).await {
                        Ok(()) => info!("istio-cni closed the ZDS connection; reconnecting"),
                        Err(e) => warn!(error = %e, "ZDS connection failed; reconnecting"),
                    }
                }
                // istio-cni may not be up yet: say so once, then quietly retry.
                Err(e) if !reported => {
                    warn!(socket = %socket.display(), error = %e, "cannot reach istio-cni's ZDS socket (is the istio-cni node agent running?); retrying");
                    reported = true;
                }
                Err(e) => debug!(socket = %socket.display(), error = %e, "ZDS connect failed"),
            }
            // A replay cut short by a disconnect proves nothing about which pods are gone.
            self.replay = None;
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    async fn serve(&mut self, conn: &Conn) -> io::Result<()> {
        conn.send(&encode_hello()).await?;
        self.replay = Some(HashSet::new());
        let mut buf = vec![0u8; MAX_PACKET];
        loop {
            let Some(packet) = conn.recv(&mut buf).await? else {
                return Ok(());
            };
            let data = &buf[..packet.len];
            let result = match decode_request(data, packet.truncated, packet.fds) {
                Ok(req) => self.apply(req).await,
                Err(e) => {
                    warn!(error = %e, "refusing a ZDS request");
                    Err(e.to_string())
                }
            };
            conn.send(&encode_ack(result.err().as_deref().unwrap_or("")))
                .await?;
        }
    }

    async fn apply(&mut self, req: Request) -> Result<(), String> {
        let result = match req {
            Request::Add {
                uid,
                name,
                namespace,
                service_account,
                netns,
            } => self.add(uid, name, namespace, service_account, netns).await,
            Request::Keep { uid } => {
                if !self.held.contains_key(&uid) {
                    // Nothing to keep; istio-cni sends `add` for pods we should start.
                    debug!(uid, "ZDS keep for a pod that is not captured");
                }
                if let Some(replay) = &mut self.replay {
                    replay.insert(uid);
                }
                Ok(())
            }
            Request::Del { uid } => {
                if let Some(replay) = &mut self.replay {
                    replay.remove(&uid);
                }
                match self.pods.remove(&uid).await {
                    Ok(was) => {
                        info!(uid, was_captured = was, "ZDS del");
                        Ok(())
                    }
                    Err(e) => Err(e.to_string()),
                }
            }
            Request::SnapshotSent => match self.replay.take() {
                Some(keep) => {
                    let result = self.pods.retain(&keep).await;
                    if let Ok(gone) = &result {
                        info!(
                            replayed = keep.len(),
                            released = gone.len(),
                            "ZDS snapshot applied"
                        );
                    }
                    self.synced.send_replace(true);
                    result.map(|_| ()).map_err(|e| e.to_string())
                }
                None => Ok(()),
            },
        };
        self.release_unused().await;
        result
    }

    async fn add(
        &mut self,
        uid: String,
        name: String,
        namespace: String,
        service_account: String,
        netns: OwnedFd,
    ) -> Result<(), String> {
        let label = format!("{namespace}/{name}");
        let id = netns_id(&netns).map_err(|e| format!("pod {label}: inspecting its netns: {e}"))?;
        if self.held.get(&uid).is_some_and(|h| h.id == id) {
            // A replay of a pod we already serve in the same netns: keep it running untouched
            // (re-adding would restart its listeners and cut its connections).
            if let Some(replay) = &mut self.replay {
                replay.insert(uid);
            }
            return Ok(());
        }
        let path = fd_path(&netns);
        // The pod's address is in its own netns (the primary plugin put it there before
        // istio-cni handed the pod over): no need to wait for the control plane to know it.
        let own = Netns::open(&path)
            .and_then(|ns| {
                ns.addresses().map_err(|source| NetnsError::Enter {
                    path: path.clone(),
                    source,
                })
            })
            .map_err(|e| format!("pod {label}: {e}"))?;
        let ip = match own.first() {
            Some(ip) => *ip,
            None => self.pod_ip(&namespace, &name, &service_account).await?,
        };
        let service_account = (!service_account.is_empty()).then_some(service_account);
        match self
            .pods
            .add(AddPod {
                uid: uid.clone(),
                name,
                namespace,
                ip,
                netns: path,
                service_account,
            })
            .await
        {
            Ok(true) => {
                info!(pod = %label, uid, "ZDS add: pod captured");
                self.held.insert(uid.clone(), Held { _fd: netns, id });
                if let Some(replay) = &mut self.replay {
                    replay.insert(uid);
                }
                Ok(())
            }
            // istio-cni already redirects this pod's traffic to ztunnel: serving nothing would
            // black-hole it, so fail loudly.
            Ok(false) => Err(format!(
                "pod {label} uses plain TCP in ztunnel's configuration, but istio-cni captured it for ambient: do the controller and istio-cni agree on the pod's ambient labels?"
            )),
            Err(e) => {
                warn!(pod = %label, error = %e, "ZDS add failed");
                Err(e.to_string())
            }
        }
    }

    /// Finds the pod's IP in the configuration by namespace/name, waiting for it like an
    /// amesh-cni ADD waits for the pod.
    async fn pod_ip(
        &self,
        namespace: &str,
        name: &str,
        service_account: &str,
    ) -> Result<IpAddr, String> {
        let mut changes = self.shared.state.subscribe();
        let wait = self.pods.config_wait();
        let find = async {
            loop {
                if let Some(found) = self.lookup(namespace, name, service_account) {
                    return found;
                }
                if changes.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(wait, find).await.map_err(|_| {
            format!(
                "pod {namespace}/{name} (or its IP) is not in ztunnel's configuration after {}s: is amesh-controller serving this node, and does it know the pod?",
                wait.as_secs()
            )
        })
    }

    fn lookup(&self, namespace: &str, name: &str, service_account: &str) -> Option<IpAddr> {
        let snapshot = self.shared.state.snapshot();
        let mut candidates = snapshot
            .workloads()
            .filter(|w| w.namespace == namespace && w.name == name && !w.addresses.is_empty());
        let first = candidates.next()?;
        // Several clusters may know a pod of that name: prefer the one on this node.
        let chosen = std::iter::once(first)
            .chain(candidates)
            .find(|w| w.node == self.shared.node)
            .unwrap_or(first);
        if !service_account.is_empty() && chosen.service_account() != service_account {
            warn!(pod = %format!("{namespace}/{name}"), zds = service_account, config = chosen.service_account(), "service accounts differ; using the configuration's");
        }
        chosen.addresses.first().copied()
    }

    /// Closes the netns descriptors of pods that are no longer captured.
    async fn release_unused(&mut self) {
        let live: HashSet<String> = self.pods.list().await.into_iter().map(|p| p.uid).collect();
        self.held.retain(|uid, _| live.contains(uid));
    }
}

/// Device and inode of a namespace descriptor.
fn netns_id(fd: &OwnedFd) -> io::Result<(u64, u64)> {
    let st = nix::sys::stat::fstat(fd.as_fd())?;
    // Field widths differ between targets; both fit u64.
    #[allow(clippy::unnecessary_cast)]
    Ok((st.st_dev as u64, st.st_ino as u64))
}

/// `/proc/<ztunnel pid>/fd/<n>`: unlike `/proc/self/...` it names the same file from the
/// `nsenter` children ztunnel runs.
fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!(
        "/proc/{}/fd/{}",
        std::process::id(),
        fd.as_raw_fd()
    ))
}

/// One received packet: its length, whether it was cut, and its descriptors (owned).
struct Packet {
    len: usize,
    truncated: bool,
    fds: Vec<OwnedFd>,
}

/// A connected `SOCK_SEQPACKET` socket driven by Tokio's reactor.
struct Conn {
    fd: AsyncFd<OwnedFd>,
}

impl Conn {
    fn connect(path: &Path) -> io::Result<Conn> {
        let fd = sock::socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        let addr = UnixAddr::new(path)?;
        // Unix connects complete at once or fail (EAGAIN: the listener's backlog is full,
        // retried like any other failure).
        sock::connect(fd.as_raw_fd(), &addr)?;
        // SAFETY: the OwnedFd is moved into the AsyncFd, so the descriptor stays open and
        // names the same socket for the AsyncFd's whole life.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)?;
        Ok(Conn { fd })
    }

    async fn send(&self, bytes: &[u8]) -> io::Result<()> {
        loop {
            let mut ready = self.fd.writable().await?;
            let sent = ready.try_io(|fd| {
                let iov = [IoSlice::new(bytes)];
                sock::sendmsg::<()>(fd.as_raw_fd(), &iov, &[], MsgFlags::MSG_NOSIGNAL, None)
                    .map_err(io::Error::from)
            });
            match sent {
                Ok(result) => return result.map(drop),
                Err(_would_block) => continue,
            }
        }
    }

    /// The next packet, or `None` when istio-cni closed the connection.
    async fn recv(&self, buf: &mut [u8]) -> io::Result<Option<Packet>> {
        let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
        loop {
            let mut ready = self.fd.readable().await?;
            let got = ready.try_io(|fd| recv_packet(fd.as_raw_fd(), buf, &mut cmsg));
            match got {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }
}

fn recv_packet(fd: RawFd, buf: &mut [u8], cmsg: &mut Vec<u8>) -> io::Result<Option<Packet>> {
    let mut iov = [IoSliceMut::new(buf)];
    let msg = sock::recvmsg::<()>(
        fd,
        &mut iov,
        Some(cmsg.as_mut_slice()),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: the kernel just installed these descriptors in our table for this
            // message; nothing else refers to them, so each gets exactly one owner here.
            fds.extend(raw.into_iter().map(|r| unsafe { OwnedFd::from_raw_fd(r) }));
        }
    }
    if msg.bytes == 0 && fds.is_empty() {
        return Ok(None);
    }
    Ok(Some(Packet {
        len: msg.bytes,
        truncated: msg.flags.contains(MsgFlags::MSG_TRUNC),
        fds,
    }))
}
