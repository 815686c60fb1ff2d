//! ZDS client against a fake istio-cni: a real `SOCK_SEQPACKET` listener, a real pod netns
//! passed as SCM_RIGHTS, and a real [`PodManager`] (capture mode `None`: istio-cni owns the
//! in-pod rules, so no nft is involved). Also the sans-IO decoder on hostile input.
//!
//! Needs root (network namespaces); the netns is named `amt-zds-<pid>` and always deleted.

use std::collections::HashSet;
use std::fs::File;
use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use amesh_proto::istio::workload::zds::{
    workload_request::Payload, workload_response, AddWorkload, DelWorkload, KeepWorkload,
    SnapshotSent, Version, WorkloadInfo, WorkloadRequest, WorkloadResponse, ZdsHello,
};
use mesh::certs::{CertManager, CertStore, LocalCa};
use mesh::hbone::H2Settings;
use mesh::state::{LocalConfig, StateStore};
use mesh::tls::TlsContext;
use nix::sys::socket::{
    self as sock, AddressFamily, Backlog, ControlMessage, MsgFlags, SockFlag, SockType, UnixAddr,
};
use prost::Message;
use ztunnel::capture::CaptureMode;
use ztunnel::metrics::Metrics;
use ztunnel::pods::PodManager;
use ztunnel::proxy::Shared;
use ztunnel::zds::{self, Request, ZdsError};

const POD_IP: &str = "10.77.0.5";

// ---------- sans-IO decoder ----------

fn encode(payload: Payload) -> Vec<u8> {
    WorkloadRequest {
        payload: Some(payload),
    }
    .encode_to_vec()
}

fn add_payload(uid: &str) -> Payload {
    Payload::Add(AddWorkload {
        uid: uid.into(),
        workload_info: Some(WorkloadInfo {
            name: "p1".into(),
            namespace: "ns1".into(),
            service_account: "sa1".into(),
        }),
    })
}

/// A few descriptors to pass around (any file will do for the decoder).
fn fds(n: usize) -> Vec<OwnedFd> {
    (0..n)
        .map(|_| File::open("/dev/null").unwrap().into())
        .collect()
}

#[test]
fn decoder_accepts_each_request() {
    match zds::decode_request(&encode(add_payload("u1")), false, fds(1)).unwrap() {
        Request::Add {
            uid,
            name,
            namespace,
            service_account,
            ..
        } => assert_eq!(
            (
                uid.as_str(),
                name.as_str(),
                namespace.as_str(),
                service_account.as_str()
            ),
            ("u1", "p1", "ns1", "sa1")
        ),
        other => panic!("expected add, got {other:?}"),
    }
    let del = encode(Payload::Del(DelWorkload { uid: "u1".into() }));
    assert!(matches!(
        zds::decode_request(&del, false, vec![]).unwrap(),
        Request::Del { uid } if uid == "u1"
    ));
    let keep = encode(Payload::Keep(KeepWorkload { uid: "u1".into() }));
    assert!(matches!(
        zds::decode_request(&keep, false, vec![]).unwrap(),
        Request::Keep { uid } if uid == "u1"
    ));
    let snap = encode(Payload::SnapshotSent(SnapshotSent {}));
    assert!(matches!(
        zds::decode_request(&snap, false, vec![]).unwrap(),
        Request::SnapshotSent
    ));
}

#[test]
fn decoder_refuses_malformed_requests() {
    let err = |packet: &[u8], truncated: bool, n: usize| {
        zds::decode_request(packet, truncated, fds(n)).unwrap_err()
    };
    // Not protobuf: a length running past the end.
    assert!(matches!(
        err(&[0x0a, 0x7f, 0x01], false, 0),
        ZdsError::Decode(_)
    ));
    // Only an unknown field: no payload this ztunnel knows.
    assert!(matches!(err(&[0x48, 0x01], false, 0), ZdsError::NoPayload));
    assert!(matches!(err(&[0x1a, 0x00], true, 0), ZdsError::TooLarge));
    let add = encode(add_payload("u1"));
    assert!(matches!(
        err(&add, false, 0),
        ZdsError::AddFds { count: 0, .. }
    ));
    assert!(matches!(
        err(&add, false, 2),
        ZdsError::AddFds { count: 2, .. }
    ));
    assert!(matches!(
        err(&encode(add_payload("")), false, 1),
        ZdsError::NoUid("add")
    ));
    let no_info = encode(Payload::Add(AddWorkload {
        uid: "u1".into(),
        workload_info: None,
    }));
    assert!(matches!(
        err(&no_info, false, 1),
        ZdsError::NoWorkloadInfo(_)
    ));
    let del = encode(Payload::Del(DelWorkload { uid: "u1".into() }));
    assert!(matches!(
        err(&del, false, 1),
        ZdsError::UnexpectedFds { kind: "del", .. }
    ));
    let del = encode(Payload::Del(DelWorkload { uid: String::new() }));
    assert!(matches!(err(&del, false, 0), ZdsError::NoUid("del")));
}

#[test]
fn hello_and_ack_encoding() {
    assert_eq!(
        ZdsHello::decode(zds::encode_hello().as_slice())
            .unwrap()
            .version(),
        Version::V1
    );
    assert_eq!(ack_error(&zds::encode_ack("boom")), "boom");
    assert_eq!(ack_error(&zds::encode_ack("")), "");
}

fn ack_error(packet: &[u8]) -> String {
    match WorkloadResponse::decode(packet).unwrap().payload {
        Some(workload_response::Payload::Ack(a)) => a.error,
        None => panic!("response without an ack"),
    }
}

// ---------- against a fake istio-cni ----------

/// A test network namespace, deleted on drop.
struct TestNetns {
    name: String,
    path: PathBuf,
}

impl TestNetns {
    fn new(tag: &str) -> TestNetns {
        let name = format!("amt-{tag}-{}", std::process::id());
        // A leftover of a crashed earlier run with the same pid would make `add` fail.
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(std::process::Stdio::null())
            .status();
        run("ip", &["netns", "add", &name]);
        let ns = TestNetns {
            path: PathBuf::from(format!("/var/run/netns/{name}")),
            name,
        };
        run("ip", &["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// TCP ports listening inside the netns at `path` (from its /proc/net/tcp{,6}).
fn listening_ports(path: &Path) -> HashSet<u16> {
    let net = format!("--net={}", path.display());
    let mut ports = HashSet::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in run("nsenter", &[&net, "cat", file]).lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // local_address is ADDR:PORT in hex; state 0A is LISTEN.
            if cols.len() > 3 && cols[3] == "0A" {
                if let Some((_, port)) = cols[1].rsplit_once(':') {
                    ports.insert(u16::from_str_radix(port, 16).unwrap());
                }
            }
        }
    }
    ports
}

/// istio-cni's side of ZDS, blocking, with timeouts so a broken client fails the test.
struct FakeCni {
    listener: OwnedFd,
    conn: Option<OwnedFd>,
}

impl FakeCni {
    fn bind(path: &Path) -> FakeCni {
        let fd = sock::socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        sock::bind(fd.as_raw_fd(), &UnixAddr::new(path).unwrap()).unwrap();
        sock::listen(&fd, Backlog::new(4).unwrap()).unwrap();
        set_timeout(&fd);
        FakeCni {
            listener: fd,
            conn: None,
        }
    }

    /// Accepts ztunnel's connection and checks its hello.
    fn accept(&mut self) {
        let fd = sock::accept4(self.listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC)
            .expect("ztunnel did not connect");
        // SAFETY: accept4 returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        set_timeout(&fd);
        self.conn = Some(fd);
        let hello = ZdsHello::decode(self.recv().as_slice()).unwrap();
        assert_eq!(hello.version(), Version::V1);
    }

    fn close(&mut self) {
        self.conn = None;
    }

    fn conn(&self) -> RawFd {
        self.conn.as_ref().expect("not connected").as_raw_fd()
    }

    fn recv(&self) -> Vec<u8> {
        let mut buf = vec![0u8; 4096];
        let n = sock::recv(self.conn(), &mut buf, MsgFlags::empty()).expect("no answer");
        buf.truncate(n);
        buf
    }

    /// Sends one packet (with descriptors) and returns the Ack's error text.
    fn send_raw(&self, packet: &[u8], fds: &[RawFd]) -> String {
        let iov = [IoSlice::new(packet)];
        let cmsgs = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsgs };
        sock::sendmsg::<()>(self.conn(), &iov, cmsgs, MsgFlags::empty(), None).unwrap();
        ack_error(&self.recv())
    }

    fn send(&self, payload: Payload, fds: &[RawFd]) -> String {
        self.send_raw(&encode(payload), fds)
    }

    fn add(&self, uid: &str, name: &str, netns: &File) -> String {
        let mut p = add_payload(uid);
        if let Payload::Add(a) = &mut p {
            a.workload_info.as_mut().unwrap().name = name.into();
        }
        self.send(p, &[netns.as_raw_fd()])
    }
}

fn set_timeout(fd: &OwnedFd) {
    let tv = nix::sys::time::TimeVal::new(20, 0);
    sock::setsockopt(fd, sock::sockopt::ReceiveTimeout, &tv).unwrap();
}

async fn build_pods(dir: &Path) -> (Arc<Shared>, Arc<PodManager>) {
    let ca = LocalCa::load_or_create(&dir.join("ca"), "cluster.local").unwrap();
    let store = CertStore::new();
    let tls = TlsContext::new("cluster.local", store.clone(), ca.trust_roots()).unwrap();
    let certs = CertManager::new(
        store,
        ca.trust_roots(),
        Arc::new(ca),
        Duration::from_secs(3600),
    );
    let state = StateStore::new();
    let yaml = format!(
        "workloads:\n- name: p1\n  namespace: ns1\n  serviceAccount: sa1\n  workloadIps: [{POD_IP}]\n  protocol: HBONE\n  node: node1\n"
    );
    state
        .replace_all(LocalConfig::from_yaml(&yaml).unwrap())
        .unwrap();
    let shared = Arc::new(Shared {
        state,
        tls,
        certs: Some(certs),
        metrics: Arc::new(Metrics::new()),
        settings: H2Settings::default(),
        mark: 0x539,
        node: "node1".into(),
        limits: Default::default(),
        resolvers: ztunnel::dns::Resolvers::new("/etc/resolv.conf"),
        cluster_domain: "cluster.local".into(),
        dns_capture: true,
    });
    let pods = PodManager::new(shared.clone(), CaptureMode::None.backend().unwrap(), None)
        .with_config_wait(Duration::from_secs(1));
    (shared, Arc::new(pods))
}

/// Blocking fake-server calls run on this worker thread; the client runs on the others.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

async fn uids(pods: &PodManager) -> Vec<String> {
    pods.list().await.into_iter().map(|p| p.uid).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_follow_istio_cni() {
    let dir = tempfile::tempdir().unwrap();
    let netns = TestNetns::new("zds");
    let netns_file = File::open(&netns.path).unwrap();
    let (shared, pods) = build_pods(dir.path()).await;
    let socket = dir.path().join("ztunnel.sock");
    let mut cni = FakeCni::bind(&socket);
    let mut client = zds::spawn(socket.clone(), shared, pods.clone());

    // First connection: hello, hostile packets, a good add, an unknown pod, snapshot.
    blocking(|| cni.accept());
    let err = blocking(|| cni.send_raw(&[0x0a, 0x7f, 0x01], &[]));
    assert!(err.contains("malformed"), "{err}");
    let err = blocking(|| cni.send(add_payload("uid-1"), &[]));
    assert!(err.contains("expected exactly one"), "{err}");
    assert_eq!(blocking(|| cni.add("uid-1", "p1", &netns_file)), "");
    let captured = pods.list().await;
    assert_eq!(captured.len(), 1);
    assert_eq!(captured[0].ip.to_string(), POD_IP);
    let first_path = captured[0].netns.clone();
    assert!(
        first_path.starts_with(format!("/proc/{}/fd/", std::process::id())),
        "{first_path:?}"
    );
    assert!(listening_ports(&netns.path).is_superset(&HashSet::from([15001, 15006, 15008])));
    let err = blocking(|| cni.add("uid-2", "not-in-config", &netns_file));
    assert!(err.contains("not in ztunnel's configuration"), "{err}");
    let keep = Payload::Keep(KeepWorkload {
        uid: "uid-1".into(),
    });
    assert_eq!(blocking(|| cni.send(keep, &[])), "");
    let snap = || Payload::SnapshotSent(SnapshotSent {});
    assert_eq!(blocking(|| cni.send(snap(), &[])), "");
    tokio::time::timeout(Duration::from_secs(5), client.wait_synced())
        .await
        .expect("snapshot applied");
    assert_eq!(uids(&pods).await, ["uid-1"]);

    // del releases the pod, its listeners and its netns descriptor; add brings it back.
    let del = Payload::Del(DelWorkload {
        uid: "uid-1".into(),
    });
    assert_eq!(blocking(|| cni.send(del, &[])), "");
    assert!(pods.list().await.is_empty());
    assert!(listening_ports(&netns.path).is_empty());
    assert!(!holds(&first_path, &netns_file), "netns fd still open");
    assert_eq!(blocking(|| cni.add("uid-1", "p1", &netns_file)), "");
    let path = pods.list().await[0].netns.clone();

    // istio-cni restarts: the replay of a served pod in the same netns leaves it untouched.
    blocking(|| cni.close());
    blocking(|| cni.accept());
    assert_eq!(blocking(|| cni.add("uid-1", "p1", &netns_file)), "");
    assert_eq!(blocking(|| cni.send(snap(), &[])), "");
    assert_eq!(pods.list().await[0].netns, path, "pod was restarted");
    assert!(holds(&path, &netns_file));

    // istio-cni restarts again and no longer knows the pod: the snapshot releases it.
    blocking(|| cni.close());
    blocking(|| cni.accept());
    assert_eq!(blocking(|| cni.send(snap(), &[])), "");
    assert!(pods.list().await.is_empty());
    assert!(listening_ports(&netns.path).is_empty());
    assert!(!holds(&path, &netns_file), "netns fd still open");
    drop(client);
}

/// Whether `path` (a `/proc/<pid>/fd/<n>`) is still open on the same namespace as `netns`.
fn holds(path: &Path, netns: &File) -> bool {
    let Ok(st) = nix::sys::stat::stat(path) else {
        return false;
    };
    let want = nix::sys::stat::fstat(netns.as_fd()).unwrap();
    (st.st_dev, st.st_ino) == (want.st_dev, want.st_ino)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_when_the_socket_appears_later() {
    let dir = tempfile::tempdir().unwrap();
    let (shared, pods) = build_pods(dir.path()).await;
    let socket = dir.path().join("ztunnel.sock");
    let mut client = zds::spawn(socket.clone(), shared, pods);
    // Let the client fail a few connects first.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut cni = FakeCni::bind(&socket);
    blocking(|| cni.accept());
    let snap = Payload::SnapshotSent(SnapshotSent {});
    assert_eq!(blocking(|| cni.send(snap, &[])), "");
    tokio::time::timeout(Duration::from_secs(5), client.wait_synced())
        .await
        .expect("snapshot applied");
    // Extra descriptors on a non-add are refused and closed, never kept.
    let devnull = File::open("/dev/null").unwrap();
    let del = Payload::Del(DelWorkload { uid: "x".into() });
    let err = blocking(|| cni.send(del, &[devnull.as_raw_fd()]));
    assert!(err.contains("only add"), "{err}");
    // The client is still serving after the refusal.
    let del = Payload::Del(DelWorkload { uid: "x".into() });
    assert_eq!(blocking(|| cni.send(del, &[])), "");
}

// ---------- the real ztunnel binary with INPOD_UDS ----------

/// Whether `GET /healthz/ready` on `addr` answers 200.
fn is_ready(addr: std::net::SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = b"GET /healthz/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let mut answer = String::new();
    s.write_all(req).is_ok()
        && s.read_to_string(&mut answer).is_ok()
        && answer.starts_with("HTTP/1.1 200")
}

/// A ztunnel process, killed on drop (its log printed if the test failed).
struct ZtunnelProcess {
    child: std::process::Child,
    log: PathBuf,
}

impl Drop for ZtunnelProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("--- ztunnel log ---\n{log}");
        }
    }
}

#[test]
fn ztunnel_takes_pods_from_inpod_uds() {
    let dir = tempfile::tempdir().unwrap();
    let netns = TestNetns::new("zdsbin");
    let netns_file = File::open(&netns.path).unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "workloads:\n- name: p1\n  namespace: ns1\n  serviceAccount: sa1\n  workloadIps: [{POD_IP}]\n  protocol: HBONE\n  node: node1\n"
        ),
    )
    .unwrap();
    let socket = dir.path().join("ztunnel.sock");
    let cni_socket = dir.path().join("amesh-cni.sock");
    let mut cni = FakeCni::bind(&socket);
    let ports: Vec<std::net::TcpListener> = (0..3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let addrs: Vec<_> = ports.iter().map(|l| l.local_addr().unwrap()).collect();
    drop(ports);
    let log = dir.path().join("ztunnel.log");
    let out = File::create(&log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_ztunnel"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("INPOD_UDS", &socket)
        .env("LOCAL_XDS_PATH", &config)
        .env("LOCAL_CA_DIR", dir.path().join("ca"))
        .env("NODE_NAME", "node1")
        .env("AMESH_CNI_SOCKET", &cni_socket)
        .env("AMESH_STATE_FILE", dir.path().join("pods.json"))
        .env("ADMIN_ADDR", addrs[0].to_string())
        .env("STATS_ADDR", addrs[1].to_string())
        .env("READINESS_ADDR", addrs[2].to_string())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let _z = ZtunnelProcess { child, log };

    cni.accept();
    // Not ready before istio-cni's snapshot.
    std::thread::sleep(Duration::from_millis(300));
    assert!(!is_ready(addrs[2]), "ready before the snapshot");
    assert_eq!(cni.add("uid-1", "p1", &netns_file), "");
    assert_eq!(cni.send(Payload::SnapshotSent(SnapshotSent {}), &[]), "");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !is_ready(addrs[2]) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not ready after the snapshot"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Listeners in the pod; the redirection is istio-cni's job, so no nft table of ours.
    assert!(listening_ports(&netns.path).is_superset(&HashSet::from([15001, 15006, 15008])));
    let net = format!("--net={}", netns.path.display());
    let rules = run("nsenter", &[&net, "nft", "list", "ruleset"]);
    assert!(rules.trim().is_empty(), "{rules}");
    // Pods come from ZDS only: no amesh-cni socket, nothing persisted.
    assert!(!cni_socket.exists());
    assert!(!dir.path().join("pods.json").exists());
    let del = Payload::Del(DelWorkload {
        uid: "uid-1".into(),
    });
    assert_eq!(cni.send(del, &[]), "");
    assert!(listening_ports(&netns.path).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_istio_cni_hands_over_is_captured_before_the_control_plane_knows_it() {
    let dir = tempfile::tempdir().unwrap();
    let netns = TestNetns::new("zdsfresh");
    // The primary plugin gave the pod its address; the control plane has not heard of it.
    for args in [
        vec![
            "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
        ],
        vec!["addr", "add", "10.77.0.9/24", "dev", "eth0"],
        vec!["link", "set", "eth0", "up"],
    ] {
        let mut all = vec!["-n", netns.name.as_str()];
        all.extend(args);
        run("ip", &all);
    }
    let netns_file = File::open(&netns.path).unwrap();
    let (shared, pods) = build_pods(dir.path()).await;
    let socket = dir.path().join("ztunnel.sock");
    let mut cni = FakeCni::bind(&socket);
    let _client = zds::spawn(socket.clone(), shared, pods.clone());
    blocking(|| cni.accept());
    let started = tokio::time::Instant::now();
    assert_eq!(blocking(|| cni.add("uid-9", "fresh", &netns_file)), "");
    // Well within the 1 s the manager would wait for the configuration.
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    let captured = pods.list().await;
    assert_eq!(captured.len(), 1);
    assert_eq!(captured[0].ip.to_string(), "10.77.0.9");
    assert_eq!(captured[0].service_account, "sa1");
    assert!(listening_ports(&netns.path).is_superset(&HashSet::from([15001, 15006, 15008])));
}
