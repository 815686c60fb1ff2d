//! eBPF capture (sk_lookup + policy routing) in-process against real network namespaces: a
//! pod netns joined by a veth to a peer netns, ztunnel's real in-pod listeners, the real
//! program. Checks each steering decision with real connections and datagrams, that install
//! is idempotent, that the pod has no netfilter rules, that removal leaves nothing, and that
//! capture fails closed while no ztunnel runs (the pinned program refuses) and a restarted one
//! takes the pinned link over.
//!
//! Needs root; namespaces are named `amt-ebpf-<pid>-<role>` and pin directories
//! `/sys/fs/bpf/amt-ebpf-<pid>-<test>`, deleted on drop, and those of a crashed earlier run
//! (its pid gone) are deleted first.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use ztunnel::capture::ebpf::EbpfCapture;
use ztunnel::capture::{routing, Capture, PodNetns};
use ztunnel::netns::Netns;
use ztunnel::sockets::{InPodSockets, PodListeners};

const POD_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 2);
const PEER_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 1);
const PROBE_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 7, 127);
const MARK: u32 = 0x539;
const TIMEOUT: Duration = Duration::from_secs(3);

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .stderr(Stdio::piped())
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A test netns, deleted on drop.
struct TestNetns {
    name: String,
    path: PathBuf,
}

impl TestNetns {
    fn new(role: &str) -> TestNetns {
        let name = format!("amt-ebpf-{}-{role}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        run("ip", &["netns", "add", &name]);
        run("ip", &["-n", &name, "link", "set", "lo", "up"]);
        TestNetns {
            path: PathBuf::from(format!("/var/run/netns/{name}")),
            name,
        }
    }

    fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    fn nsenter(&self, program: &str, args: &[&str]) -> String {
        let net = format!("--net={}", self.path.display());
        let mut all = vec![net.as_str(), program];
        all.extend_from_slice(args);
        run("nsenter", &all)
    }

    fn within<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        within(&self.path, f)
    }
}

/// Runs `f` on a thread inside the netns at `path` (sockets made there stay in it).
fn within<T: Send + 'static>(path: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let file = std::fs::File::open(path).unwrap();
    std::thread::spawn(move || {
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A directory of pinned links for one test, on bpffs; deleted (its pins with it, which
/// releases their links) on drop.
struct TestPins {
    path: PathBuf,
}

impl TestPins {
    fn new(test: &str) -> TestPins {
        ztunnel::capture::links::ensure_bpffs().expect("bpffs at /sys/fs/bpf");
        let path = PathBuf::from(format!(
            "{}/amt-ebpf-{}-{test}",
            ztunnel::capture::links::BPFFS,
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        TestPins { path }
    }

    /// Whether a link is pinned for the netns with inode `ino`.
    fn pinned(&self, ino: u64) -> bool {
        self.path.join(format!("netns-{ino}")).exists()
    }
}

impl Drop for TestPins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn inode(file: &std::fs::File) -> u64 {
    std::os::unix::fs::MetadataExt::ino(&file.metadata().unwrap())
}

/// Deletes `amt-ebpf-<pid>-*` namespaces and pin directories whose test process is gone (a
/// crashed earlier run).
fn reap_crashed_runs() {
    let dead = |name: &str| {
        name.strip_prefix("amt-ebpf-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
            .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    };
    if let Ok(dir) = std::fs::read_dir(ztunnel::capture::links::BPFFS) {
        for entry in dir.filter_map(Result::ok) {
            if entry.file_name().to_str().is_some_and(dead) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    for name in run("ip", &["netns", "list"])
        .lines()
        .filter_map(|l| l.split_whitespace().next())
    {
        let Some(pid) = name
            .strip_prefix("amt-ebpf-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// Ids of the programs attached to a netns for sk_lookup, asked of the kernel
/// (`BPF_PROG_QUERY`).
fn sk_lookup_programs(netns: BorrowedFd<'_>) -> Vec<u32> {
    const BPF_PROG_QUERY: libc::c_long = 16;
    const BPF_SK_LOOKUP: u32 = 36;
    let mut ids = [0u32; 8];
    // `union bpf_attr`, query member: target_fd, attach_type, query_flags, attach_flags,
    // prog_ids (u64 pointer), prog_cnt (in: room, out: count).
    let mut attr = [0u32; 32];
    attr[0] = netns.as_raw_fd() as u32;
    attr[1] = BPF_SK_LOOKUP;
    let ptr = ids.as_mut_ptr() as u64;
    attr[4] = ptr as u32;
    attr[5] = (ptr >> 32) as u32;
    attr[6] = ids.len() as u32;
    // SAFETY: `attr` is larger than the kernel's `bpf_attr`; it and `ids` (whose room is in
    // prog_cnt) live through the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_QUERY,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    assert_eq!(rc, 0, "BPF_PROG_QUERY: {}", std::io::Error::last_os_error());
    ids[..attr[6] as usize].to_vec()
}

/// Entries of the bypass map among `map_ids` (one program's maps).
fn bypass_entries(map_ids: &[u32]) -> usize {
    let id = map_ids
        .iter()
        .copied()
        .find(|&id| {
            aya::maps::MapInfo::from_id(id)
                .is_ok_and(|m| m.name_as_str() == Some(ebpf_common::BYPASS_MAP))
        })
        .expect("the program's bypass map");
    let map = aya::maps::Map::from_map_data(aya::maps::MapData::from_id(id).unwrap()).unwrap();
    let map: aya::maps::HashMap<_, [u8; 12], u8> = map.try_into().unwrap();
    map.keys().filter(Result::is_ok).count()
}

/// Whether the kernel still has a program with this id.
fn program_exists(id: u32) -> bool {
    aya::programs::loaded_programs().any(|p| p.is_ok_and(|p| p.id() == id))
}

/// Waits for the kernel to free a released object (it does so after an RCU grace period).
fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Bed {
    pod: TestNetns,
    peer: TestNetns,
}

impl Bed {
    /// A pod and its peer; `tag` keeps the names of tests running at once apart.
    fn new(tag: &str) -> Bed {
        reap_crashed_runs();
        let pod = TestNetns::new(&format!("{tag}pod"));
        let peer = TestNetns::new(&format!("{tag}peer"));
        let veth = format!("amte{}{tag}", std::process::id());
        pod.ip(&[
            "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &peer.name,
        ]);
        pod.ip(&["link", "set", &veth, "name", "eth0"]);
        pod.ip(&["addr", "add", &format!("{POD_IP}/24"), "dev", "eth0"]);
        pod.ip(&["link", "set", "eth0", "up"]);
        pod.ip(&["route", "add", "default", "via", &PEER_IP.to_string()]);
        peer.ip(&["addr", "add", &format!("{PEER_IP}/24"), "dev", "eth0"]);
        peer.ip(&["addr", "add", &format!("{PROBE_IP}/32"), "dev", "eth0"]);
        peer.ip(&["link", "set", "eth0", "up"]);
        Bed { pod, peer }
    }
}

fn pod_netns(bed: &Bed, worker: &Netns) -> PodNetns {
    PodNetns {
        netns: bed.pod.path.clone(),
        mark: MARK,
        ip: POD_IP.into(),
        worker: worker.clone(),
        dns: true,
    }
}

/// Connects from inside `ns` (an unmarked socket, as the app's), optionally from `source`,
/// sends `msg` and returns the socket.
fn connect_from(
    ns: &Path,
    source: Option<Ipv4Addr>,
    dst: SocketAddr,
    msg: &'static [u8],
) -> std::io::Result<TcpStream> {
    within(ns, move || {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        if let Some(src) = source {
            s.bind(&SocketAddr::from((src, 0)).into())?;
        }
        s.connect_timeout(&dst.into(), TIMEOUT)?;
        let mut tcp: TcpStream = s.into();
        tcp.set_read_timeout(Some(TIMEOUT))?;
        tcp.write_all(msg)?;
        Ok(tcp)
    })
}

async fn accept(listener: &tokio::net::TcpListener) -> (tokio::net::TcpStream, SocketAddr) {
    tokio::time::timeout(TIMEOUT, listener.accept())
        .await
        .expect("a steered connection in time")
        .expect("accept")
}

async fn read_some(tcp: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 64];
    let n = tokio::time::timeout(TIMEOUT, tcp.read(&mut buf))
        .await
        .expect("data in time")
        .expect("read");
    buf.truncate(n);
    buf
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sk_lookup_steers_each_flow_and_removal_leaves_nothing() {
    use tokio::io::AsyncWriteExt;
    let bed = Bed::new("s");
    let pins = TestPins::new("steer");
    let capture = EbpfCapture::load(&pins.path).expect("loading the eBPF capture program");
    let worker = Netns::open(&bed.pod.path).unwrap();
    let listeners = PodListeners::open(&worker, MARK, true).unwrap();
    let fds = listeners.fds().unwrap();
    let pod = pod_netns(&bed, &worker);
    let netns_file = std::fs::File::open(&bed.pod.path).unwrap();
    assert!(sk_lookup_programs(netns_file.as_fd()).is_empty());

    capture.install(&pod, &fds).await.expect("install");
    let programs = sk_lookup_programs(netns_file.as_fd());
    assert_eq!(programs.len(), 1, "one program attached");
    // A repeated install (runtime retry) changes nothing.
    capture.install(&pod, &fds).await.expect("install again");
    assert_eq!(sk_lookup_programs(netns_file.as_fd()), programs);
    assert_eq!(capture.attached(), 1);
    let program_id = programs[0];
    let map_ids: Vec<u32> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == program_id)
        .and_then(|p| p.map_ids().ok().flatten())
        .expect("the attached program's maps");
    assert!(!map_ids.is_empty());
    let (rules, routes) = routing::leftovers(&pod).await.unwrap();
    assert_eq!(
        rules,
        routing::rules(MARK, ztunnel::capture::ebpf::PROBE_SOURCE, true)
    );
    assert_eq!(routes, 1, "one local route in table {}", routing::TABLE);
    let ruleset = bed.pod.nsenter("nft", &["list", "ruleset"]);
    assert!(
        ruleset.trim().is_empty(),
        "netfilter rules in the pod:\n{ruleset}"
    );

    // Outbound TCP: the app connects to a remote address; ztunnel's outbound listener accepts
    // with that address as its local address, from the pod's own address.
    let remote: SocketAddr = "10.1.2.3:80".parse().unwrap();
    let pod_path = bed.pod.path.clone();
    let app = tokio::task::spawn_blocking(move || connect_from(&pod_path, None, remote, b"out"));
    let (mut steered, peer) = accept(&listeners.outbound).await;
    assert_eq!(
        steered.local_addr().unwrap(),
        remote,
        "original destination"
    );
    assert_eq!(peer.ip(), std::net::IpAddr::from(POD_IP));
    assert_eq!(read_some(&mut steered).await, b"out");
    steered.write_all(b"back").await.unwrap();
    let mut app = app.await.unwrap().expect("app connect");
    let mut buf = [0u8; 4];
    app.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"back");

    // Inbound plaintext and HBONE from the network.
    for (port, listener) in [(8080, &listeners.inbound_plain), (15008, &listeners.hbone)] {
        let dst = SocketAddr::from((POD_IP, port));
        let client =
            connect_from(&bed.peer.path, Some(PEER_IP), dst, b"in").expect("inbound connect");
        let (mut steered, from) = accept(listener).await;
        assert_eq!(steered.local_addr().unwrap(), dst);
        assert_eq!(from, client.local_addr().unwrap());
        assert_eq!(read_some(&mut steered).await, b"in");
    }

    // Kubelet probes reach the app directly, and its replies leave the pod.
    let app_listener = bed
        .pod
        .within(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, 8081)))
        .unwrap();
    let mut probe = connect_from(
        &bed.peer.path,
        Some(PROBE_IP),
        SocketAddr::from((POD_IP, 8081)),
        b"probe",
    )
    .expect("probe connect");
    app_listener.set_nonblocking(false).unwrap();
    let (mut at_app, from) = app_listener.accept().unwrap();
    assert_eq!(from.ip(), std::net::IpAddr::from(PROBE_IP));
    at_app.write_all(b"ok").unwrap();
    let mut buf = [0u8; 2];
    probe
        .read_exact(&mut buf)
        .expect("the app's reply to the probe");
    assert_eq!(&buf, b"ok");

    // ztunnel's own connection to the app from a client's address (original source) reaches
    // the app, not ztunnel's inbound listener, and the app's replies come back to it.
    let sockets = InPodSockets::new(worker.clone(), MARK);
    let _ = sockets.bypass.set(
        capture
            .bypass(&pod)
            .expect("eBPF capture announces upstream connections"),
    );
    let app_listener = bed
        .pod
        .within(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, 8083)))
        .unwrap();
    let client: SocketAddr = "10.99.0.7:0".parse().unwrap();
    let (mut upstream, _exception) = tokio::time::timeout(
        TIMEOUT,
        sockets.connect(SocketAddr::from((POD_IP, 8083)), Some(client)),
    )
    .await
    .expect("the upstream connection in time")
    .expect("ztunnel's connection to the app");
    let (mut at_app, from) = app_listener.accept().unwrap();
    assert_eq!(from.ip(), client.ip(), "the app sees the client's address");
    at_app.write_all(b"reply").unwrap();
    assert_eq!(read_some(&mut upstream).await, b"reply");
    // Its capture exception lasts as long as the connection (the app's side can be made
    // from a later segment, see `CaptureException`), and goes with it.
    assert_eq!(
        bypass_entries(&map_ids),
        1,
        "the open connection's exception"
    );
    drop((upstream, _exception));
    assert_eq!(
        bypass_entries(&map_ids),
        0,
        "an exception outlived its connection"
    );

    // Loopback stays with the app.
    let lo_listener = bed
        .pod
        .within(|| TcpListener::bind("127.0.0.1:7000"))
        .unwrap();
    let _lo = connect_from(
        &bed.pod.path,
        None,
        "127.0.0.1:7000".parse().unwrap(),
        b"lo",
    )
    .unwrap();
    let (_, from) = lo_listener.accept().unwrap();
    assert!(from.ip().is_loopback());

    // DNS over UDP goes to the DNS socket, which learns where it was sent.
    let resolver: SocketAddr = "10.96.0.10:53".parse().unwrap();
    bed.pod.within(move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.send_to(b"query", resolver).unwrap();
    });
    let mut buf = [0u8; 16];
    let (n, from) = tokio::time::timeout(
        TIMEOUT,
        listeners.dns_udp.as_ref().unwrap().recv_from(&mut buf),
    )
    .await
    .expect("the DNS query steered in time")
    .unwrap();
    assert_eq!(&buf[..n], b"query");
    assert_eq!(from.ip(), std::net::IpAddr::from(POD_IP));

    // DNS over TCP goes to the DNS listener, with the resolver's address as its local address.
    let pod_path = bed.pod.path.clone();
    let app = tokio::task::spawn_blocking(move || connect_from(&pod_path, None, resolver, b"q"));
    let (mut steered, _) = accept(listeners.dns_tcp.as_ref().unwrap()).await;
    assert_eq!(steered.local_addr().unwrap(), resolver);
    assert_eq!(read_some(&mut steered).await, b"q");
    drop(app.await.unwrap().expect("DNS over TCP connect"));

    // The kernel's routing decisions: the pod's TCP and DNS are made local, ICMP and other UDP
    // keep the pod's own routes, ztunnel's marked sockets too.
    let route = |args: &[&str]| {
        let mut all = vec!["route", "get", "10.250.0.1"];
        all.extend_from_slice(args);
        bed.pod.ip(&all)
    };
    assert!(route(&["ipproto", "tcp"]).starts_with("local "));
    assert!(route(&["ipproto", "udp", "dport", "53"]).starts_with("local "));
    for other in [
        &["ipproto", "icmp"][..],
        &["ipproto", "udp", "dport", "123"],
        &["ipproto", "tcp", "mark", "0x539"],
    ] {
        let r = route(other);
        assert!(!r.starts_with("local "), "{other:?}: {r}");
    }

    // Other UDP is untouched: it reaches the peer.
    let peer_udp = bed
        .peer
        .within(|| UdpSocket::bind((PEER_IP, 9999)))
        .unwrap();
    peer_udp.set_read_timeout(Some(TIMEOUT)).unwrap();
    bed.pod.within(|| {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.send_to(b"ntp", SocketAddrV4::new(PEER_IP, 9999)).unwrap();
    });
    let (n, _) = peer_udp
        .recv_from(&mut buf)
        .expect("plain UDP reaches the peer");
    assert_eq!(&buf[..n], b"ntp");

    // A restart: the old process's instance stays attached through its pinned link, an older
    // ztunnel's rule sits at one of our priorities, and the new process captures the pod
    // again: one program (the new one, in the same link), the wanted rules exactly once, and
    // outbound steered to the (here: same) listeners.
    let old_program = programs[0];
    drop(capture);
    assert_eq!(sk_lookup_programs(netns_file.as_fd()), programs);
    assert!(pins.pinned(inode(&netns_file)));
    bed.pod.ip(&[
        "rule", "add", "pref", "32752", "ipproto", "tcp", "lookup", "101",
    ]);
    let capture = EbpfCapture::load(&pins.path).expect("loading again");
    capture
        .install(&pod, &fds)
        .await
        .expect("install after a restart");
    let programs = sk_lookup_programs(netns_file.as_fd());
    assert_eq!(programs.len(), 1);
    assert_ne!(programs[0], old_program, "the new program is attached");
    eventually("the old program to be freed", || {
        !program_exists(old_program)
    });
    let (rules, _) = routing::leftovers(&pod).await.unwrap();
    assert_eq!(
        rules,
        routing::rules(MARK, ztunnel::capture::ebpf::PROBE_SOURCE, true)
    );
    let pod_path = bed.pod.path.clone();
    let app = tokio::task::spawn_blocking(move || connect_from(&pod_path, None, remote, b"again"));
    let (mut steered, _) = accept(&listeners.outbound).await;
    assert_eq!(steered.local_addr().unwrap(), remote);
    assert_eq!(read_some(&mut steered).await, b"again");
    drop(app.await.unwrap().expect("app connect after the restart"));
    let program_id = programs[0];
    let map_ids: Vec<u32> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == program_id)
        .and_then(|p| p.map_ids().ok().flatten())
        .expect("the new program's maps");

    // Removal: no program on the netns, the program and its map freed, no rule, no route.
    capture.remove(&pod).await.expect("remove");
    assert!(sk_lookup_programs(netns_file.as_fd()).is_empty());
    assert_eq!(capture.attached(), 0);
    assert!(!pins.pinned(inode(&netns_file)), "the pin is left");
    eventually("the program to be freed", || !program_exists(program_id));
    for id in map_ids {
        eventually("the map to be freed", || {
            aya::maps::MapInfo::from_id(id).is_err()
        });
    }
    let (rules, routes) = routing::leftovers(&pod).await.unwrap();
    assert!(rules.is_empty(), "rules left: {rules:?}");
    assert_eq!(routes, 0);
    // And the pod's TCP is no longer captured: it reaches the peer directly.
    let peer_listener = bed
        .peer
        .within(|| TcpListener::bind((PEER_IP, 8082)))
        .unwrap();
    let _direct =
        connect_from(&bed.pod.path, None, SocketAddr::from((PEER_IP, 8082)), b"x").unwrap();
    let (_, from) = peer_listener.accept().unwrap();
    assert_eq!(from.ip(), std::net::IpAddr::from(POD_IP));
    drop(listeners);
}

/// Whether a TCP connection from the peer to the pod's app port is refused (it must not
/// reach the app uncaptured). Refused or timed out both count: neither reaches the app.
fn refused(bed: &Bed, port: u16) -> bool {
    connect_from(
        &bed.peer.path,
        Some(PEER_IP),
        SocketAddr::from((POD_IP, port)),
        b"plain",
    )
    .is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_fails_closed_while_ztunnel_is_down_and_a_restart_takes_the_link_over() {
    let bed = Bed::new("r");
    let pins = TestPins::new("restart");
    let worker = Netns::open(&bed.pod.path).unwrap();
    let pod = pod_netns(&bed, &worker);
    let netns_file = std::fs::File::open(&bed.pod.path).unwrap();
    let ino = inode(&netns_file);
    // The app, listening on every address of the pod.
    let app = bed
        .pod
        .within(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, 8080)))
        .unwrap();
    app.set_nonblocking(true).unwrap();
    // A second pod of the node, which is deleted while ztunnel is down.
    let other = TestNetns::new("rother");
    other.ip(&["addr", "add", "10.250.0.3/32", "dev", "lo"]);
    let other_worker = Netns::open(&other.path).unwrap();
    let other_pod = PodNetns {
        netns: other.path.clone(),
        mark: MARK,
        ip: Ipv4Addr::new(10, 250, 0, 3).into(),
        worker: other_worker.clone(),
        dns: true,
    };
    let other_file = std::fs::File::open(&other.path).unwrap();
    let other_ino = inode(&other_file);

    // The first ztunnel captures both pods; inbound plaintext goes to its listener.
    let old_program = {
        let capture = EbpfCapture::load(&pins.path).expect("loading the eBPF capture program");
        let listeners = PodListeners::open(&worker, MARK, true).unwrap();
        capture
            .install(&pod, &listeners.fds().unwrap())
            .await
            .unwrap();
        let other_listeners = PodListeners::open(&other_worker, MARK, true).unwrap();
        capture
            .install(&other_pod, &other_listeners.fds().unwrap())
            .await
            .unwrap();
        let _client = connect_from(
            &bed.peer.path,
            Some(PEER_IP),
            SocketAddr::from((POD_IP, 8080)),
            b"in",
        )
        .expect("inbound connect");
        let (mut steered, _) = accept(&listeners.inbound_plain).await;
        assert_eq!(read_some(&mut steered).await, b"in");
        assert!(pins.pinned(ino) && pins.pinned(other_ino));
        sk_lookup_programs(netns_file.as_fd())[0]
        // ztunnel dies: its descriptors close, the listeners with them.
    };

    // Down: the pinned program is still attached and, its listeners gone, refuses the flows
    // it would capture; the app never sees them. (Gone means closed everywhere: a process
    // another test forks at that moment holds copies until it execs.)
    assert_eq!(sk_lookup_programs(netns_file.as_fd()), vec![old_program]);
    eventually("the dead ztunnel's listeners to close", || {
        let listening = bed.pod.nsenter("ss", &["-Htln"]);
        [":15001 ", ":15006 ", ":15008 "]
            .iter()
            .all(|port| !listening.contains(port))
    });
    for port in [8080, 15008] {
        assert!(
            refused(&bed, port),
            "port {port} reached while ztunnel is down"
        );
    }
    assert!(
        matches!(app.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the app accepted an uncaptured connection"
    );
    // The app's own outbound TCP is refused too (nothing is proxied around the mesh).
    assert!(
        connect_from(&bed.pod.path, None, "10.1.2.3:80".parse().unwrap(), b"out").is_err(),
        "outbound TCP left the pod uncaptured"
    );
    // What capture leaves alone still works: the app is up and kubelet probes reach it.
    let _probe = connect_from(
        &bed.peer.path,
        Some(PROBE_IP),
        SocketAddr::from((POD_IP, 8080)),
        b"probe",
    )
    .expect("a kubelet probe while ztunnel is down");
    app.set_nonblocking(false).unwrap();
    let (_, from) = app.accept().unwrap();
    assert_eq!(from.ip(), std::net::IpAddr::from(PROBE_IP));
    // The other pod is deleted while no ztunnel runs (its netns lives on while this test
    // holds it, so the check below can ask it).
    drop(other);
    drop(other_worker);

    // The restarted ztunnel: new listeners, a new program swapped into the same link.
    let capture = EbpfCapture::load(&pins.path).expect("loading after the restart");
    let listeners = PodListeners::open(&worker, MARK, true).unwrap();
    capture
        .install(&pod, &listeners.fds().unwrap())
        .await
        .expect("install after the restart");
    let programs = sk_lookup_programs(netns_file.as_fd());
    assert_eq!(programs.len(), 1, "one program attached after the restart");
    assert_ne!(programs[0], old_program, "the new program is attached");
    eventually("the old program to be freed", || {
        !program_exists(old_program)
    });
    let _client = connect_from(
        &bed.peer.path,
        Some(PEER_IP),
        SocketAddr::from((POD_IP, 8080)),
        b"again",
    )
    .expect("inbound connect after the restart");
    let (mut steered, _) = accept(&listeners.inbound_plain).await;
    assert_eq!(read_some(&mut steered).await, b"again");
    // The pod deleted meanwhile did not come back: its pin is released.
    assert!(pins.pinned(other_ino));
    capture.restored();
    assert!(!pins.pinned(other_ino), "the gone pod's pin is left");
    assert!(
        sk_lookup_programs(other_file.as_fd()).is_empty(),
        "the gone pod's program is still attached"
    );
    assert!(pins.pinned(ino), "the restored pod lost its pin");

    // DEL: nothing attached, nothing pinned, and the pod is plain again.
    capture.remove(&pod).await.expect("remove");
    assert!(sk_lookup_programs(netns_file.as_fd()).is_empty());
    assert!(!pins.pinned(ino), "the pin is left after the DEL");
    assert!(
        std::fs::read_dir(&pins.path).unwrap().next().is_none(),
        "pins left"
    );
    // Without capture the same connection reaches the app: the refusals above were capture's.
    assert!(
        !refused(&bed, 8080),
        "the app is unreachable without capture"
    );
    let (_, from) = app.accept().unwrap();
    assert_eq!(from.ip(), std::net::IpAddr::from(PEER_IP));
    drop(listeners);
}

/// ztunnel in ebpf mode without the capabilities eBPF needs stops at startup and says what it
/// lacks (root's capabilities dropped with setpriv).
#[test]
fn startup_without_privileges_names_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, "workloads: []\n").unwrap();
    let out = Command::new("setpriv")
        .args([
            "--bounding-set=-all",
            "--inh-caps=-all",
            "--ambient-caps=-all",
            env!("CARGO_BIN_EXE_ztunnel"),
        ])
        .env("CAPTURE_MODE", "ebpf")
        .env("LOCAL_XDS_PATH", &config)
        .env("LOCAL_CA_DIR", dir.path().join("ca"))
        .env("NODE_NAME", "node1")
        .env("AMESH_CNI_SOCKET", dir.path().join("cni.sock"))
        .env("AMESH_STATE_FILE", dir.path().join("pods.json"))
        .env("ADMIN_ADDR", "127.0.0.1:0")
        .env("STATS_ADDR", "127.0.0.1:0")
        .env("READINESS_ADDR", "127.0.0.1:0")
        .stdin(Stdio::null())
        .output()
        .expect("setpriv (util-linux)");
    let log =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "ztunnel started without privileges:\n{log}"
    );
    assert!(log.contains("CAPTURE_MODE=ebpf"), "{log}");
    assert!(
        log.contains("lacks CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_BPF"),
        "{log}"
    );
}

/// Runs ztunnel (local config, CAPTURE_MODE unset) until its log has `line` or it exits;
/// `setpriv` drops root's capabilities first when `unprivileged`. Returns the log.
fn start_with_unset_mode(unprivileged: bool, pins: &TestPins, line: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, "workloads: []\n").unwrap();
    let log_path = dir.path().join("ztunnel.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut cmd = if unprivileged {
        let mut c = Command::new("setpriv");
        c.args([
            "--bounding-set=-all",
            "--inh-caps=-all",
            "--ambient-caps=-all",
            env!("CARGO_BIN_EXE_ztunnel"),
        ]);
        c
    } else {
        Command::new(env!("CARGO_BIN_EXE_ztunnel"))
    };
    let mut child = cmd
        .env_remove("CAPTURE_MODE")
        .env("LOCAL_XDS_PATH", &config)
        .env("LOCAL_CA_DIR", dir.path().join("ca"))
        .env("NODE_NAME", "node1")
        .env("AMESH_BPF_PIN_DIR", &pins.path)
        .env("AMESH_CNI_SOCKET", dir.path().join("cni.sock"))
        .env("AMESH_STATE_FILE", dir.path().join("pods.json"))
        .env("ADMIN_ADDR", "127.0.0.1:0")
        .env("STATS_ADDR", "127.0.0.1:0")
        .env("READINESS_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("ztunnel (setpriv from util-linux)");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let text = loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let exited = child.try_wait().unwrap().is_some();
        if text.contains(line) || exited || tokio::time::Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    text
}

/// With CAPTURE_MODE unset, ztunnel captures with eBPF where it can, and falls back to nft,
/// saying why, where it cannot (here: without the capabilities).
#[test]
fn unset_capture_mode_is_ebpf_where_supported_and_nft_with_the_reason_otherwise() {
    let pins = TestPins::new("auto");
    let log = start_with_unset_mode(false, &pins, "ztunnel ready");
    assert!(
        log.contains("CAPTURE_MODE unset: capturing with eBPF"),
        "{log}"
    );
    assert!(log.contains("ztunnel ready"), "{log}");
    let log = start_with_unset_mode(true, &pins, "ztunnel ready");
    assert!(
        log.contains("CAPTURE_MODE unset and eBPF capture unavailable: capturing with nft"),
        "{log}"
    );
    assert!(
        log.contains("lacks CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_BPF"),
        "the reason is not given: {log}"
    );
    assert!(log.contains("ztunnel ready"), "{log}");
}

/// A ztunnel that starts with nft after one that captured with eBPF releases the pinned links:
/// their programs, listeners gone, would refuse every flow nft redirects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nft_after_ebpf_releases_the_pinned_links() {
    let bed = Bed::new("n");
    let pins = TestPins::new("nft");
    let worker = Netns::open(&bed.pod.path).unwrap();
    let pod = pod_netns(&bed, &worker);
    let netns_file = std::fs::File::open(&bed.pod.path).unwrap();
    {
        let capture = EbpfCapture::load(&pins.path).expect("loading the eBPF capture program");
        let listeners = PodListeners::open(&worker, MARK, true).unwrap();
        capture
            .install(&pod, &listeners.fds().unwrap())
            .await
            .unwrap();
    }
    assert_eq!(sk_lookup_programs(netns_file.as_fd()).len(), 1);
    assert!(pins.pinned(inode(&netns_file)));
    let _nft = ztunnel::capture::CaptureMode::Nft
        .backend_with(&pins.path)
        .unwrap();
    assert!(sk_lookup_programs(netns_file.as_fd()).is_empty());
    assert!(!pins.pinned(inode(&netns_file)));
}
