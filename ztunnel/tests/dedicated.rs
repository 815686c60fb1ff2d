//! Dedicated mode (`PROXY_MODE=dedicated`): the real `ztunnel` binary runs inside the network
//! namespace of the one workload it serves (a VM or bare-metal host), opens the same listeners
//! there, installs no capture of its own, and carries the workload's traffic over HBONE once the
//! operator steers it to 15001.
//!
//! Needs root (network namespaces, nft). Two namespaces `amt-ded-<case>-{a,b}-<pid>` joined by a
//! veth pair on 10.79.0.0/24 stand for two hosts; they are always deleted and both ztunnels
//! always killed. Host interfaces are never touched.

use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const A_IP: &str = "10.79.0.1";
const B_IP: &str = "10.79.0.2";
const ECHO_PORT: u16 = 7079;
/// Admin endpoints, inside each ztunnel's own namespace (so fixed ports cannot collide).
const ADMIN: &str = "127.0.0.1:15000";
const STATS: &str = "127.0.0.1:15020";
const READY: &str = "127.0.0.1:15021";

const CONFIG: &str = "\
workloads:
- name: wa
  namespace: demo
  serviceAccount: sa-a
  workloadName: wa
  workloadIps: [10.79.0.1]
  protocol: HBONE
  node: vm-a
- name: wb
  namespace: demo
  serviceAccount: sa-b
  workloadName: wb
  workloadIps: [10.79.0.2]
  protocol: HBONE
  node: vm-b
";

// ---------- network namespaces ----------

/// A test network namespace, deleted on drop.
struct TestNetns {
    name: String,
    path: PathBuf,
}

impl TestNetns {
    fn new(case: &str, role: &str) -> TestNetns {
        let name = format!("amt-ded-{case}-{role}-{}", std::process::id());
        // A leftover of a crashed earlier run with the same pid would make `add` fail.
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        run("ip", &["netns", "add", &name]);
        let ns = TestNetns {
            path: PathBuf::from(format!("/var/run/netns/{name}")),
            name,
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n <ns> args…`, which must succeed.
    fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Runs a program inside the namespace; the caller looks at the outcome.
    fn exec(&self, program: &str, args: &[&str], stdin: &str) -> Output {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// Runs `f` on a thread that entered the namespace (sockets it creates live there).
    fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let file = File::open(&self.path).unwrap();
        std::thread::spawn(move || {
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("setns into the test netns");
            f()
        })
    }

    fn run_in<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.spawn(f).join().unwrap()
    }

    /// TCP ports listening in the netns (from its /proc/net/tcp{,6}: state 0A is LISTEN).
    fn listening_ports(&self) -> HashSet<u16> {
        let mut ports = HashSet::new();
        for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
            let out = self.exec("cat", &[file], "");
            for line in String::from_utf8_lossy(&out.stdout).lines().skip(1) {
                let cols: Vec<&str> = line.split_whitespace().collect();
                if cols.len() > 3 && cols[3] == "0A" {
                    if let Some((_, port)) = cols[1].rsplit_once(':') {
                        ports.insert(u16::from_str_radix(port, 16).unwrap());
                    }
                }
            }
        }
        ports
    }

    fn udp_ports(&self) -> HashSet<u16> {
        let out = self.exec("cat", &["/proc/net/udp"], "");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().nth(1)?.rsplit_once(':').map(|p| p.1))
            .map(|p| u16::from_str_radix(p, 16).unwrap())
            .collect()
    }

    fn nft_ruleset(&self) -> String {
        let out = self.exec("nft", &["list", "ruleset"], "");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// For failure messages: a test namespace that vanished under the test was deleted by someone
/// else (`amesh-lab up` reaps `amesh-<id>-*` namespaces it takes for a crashed lab's, and
/// kills what runs in them).
fn vanished(spaces: &[&TestNetns]) -> String {
    let gone: Vec<&str> = spaces
        .iter()
        .filter(|ns| !ns.path.exists())
        .map(|ns| ns.name.as_str())
        .collect();
    if gone.is_empty() {
        String::new()
    } else {
        format!("\n(test namespaces deleted from outside the test: {gone:?})")
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

/// Two namespaces ("hosts") joined by a veth pair: A has 10.79.0.1/24, B 10.79.0.2/24.
fn two_hosts(case: &str) -> (TestNetns, TestNetns) {
    let a = TestNetns::new(case, "a");
    let b = TestNetns::new(case, "b");
    // Created inside A with its peer moved straight into B: nothing appears on the host.
    a.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &b.name,
    ]);
    for (ns, ip) in [(&a, A_IP), (&b, B_IP)] {
        ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        ns.ip(&["link", "set", "eth0", "up"]);
    }
    (a, b)
}

// ---------- a real ztunnel in dedicated mode ----------

/// A dedicated-mode ztunnel running inside `ns`, killed on drop.
struct Ztunnel {
    child: Child,
    log: PathBuf,
}

impl Ztunnel {
    /// Starts ztunnel inside `ns` for workload `demo/<name>/<sa>` and waits until it is ready.
    fn start(ns: &TestNetns, dir: &Path, name: &str, sa: &str) -> Ztunnel {
        let z = Ztunnel::spawn(ns, dir, &format!("demo/{name}/{sa}"));
        z.wait_ready(ns)
    }

    fn spawn(ns: &TestNetns, dir: &Path, workload_info: &str) -> Ztunnel {
        let log = dir.join(format!("ztunnel-{}.log", workload_info.replace('/', "_")));
        let out = File::create(&log).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, env!("CARGO_BIN_EXE_ztunnel")])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("PROXY_MODE", "dedicated")
            .env("PROXY_WORKLOAD_INFO", workload_info)
            .env("LOCAL_XDS_PATH", dir.join("config.yaml"))
            // Both ztunnels share the CA, so they share a root.
            .env("LOCAL_CA_DIR", dir.join("ca"))
            .env("ADMIN_ADDR", ADMIN)
            .env("STATS_ADDR", STATS)
            .env("READINESS_ADDR", READY)
            .env(
                "RUST_LOG",
                std::env::var("ZTUNNEL_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Ztunnel { child, log }
    }

    fn wait_ready(mut self, ns: &TestNetns) -> Ztunnel {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if ns.run_in(|| http_get(READY, "/healthz/ready").starts_with("HTTP/1.1 200")) {
                return self;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "ztunnel exited ({status}){}:\n{}",
                    vanished(&[ns]),
                    self.log()
                );
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "ztunnel not ready:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits (bounded) for the process to exit on its own.
    fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "ztunnel still running:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Ztunnel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- {} ---\n{}", self.log.display(), self.log());
        }
    }
}

/// `GET path` over HTTP/1.1 from the calling thread's namespace; the raw answer, or "".
fn http_get(addr: &str, path: &str) -> String {
    let addr: SocketAddr = addr.parse().unwrap();
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return String::new();
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer
}

// ---------- the apps ----------

/// A TCP echo server on 0.0.0.0:`port` inside `ns`; records the peers it saw. Stops on drop.
struct Echo {
    stop: Arc<AtomicBool>,
    peers: Arc<parking_lot::Mutex<Vec<SocketAddr>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Echo {
    fn start(ns: &TestNetns, port: u16) -> Echo {
        let stop = Arc::new(AtomicBool::new(false));
        let peers = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let listener = ns
            .run_in(move || TcpListener::bind(("0.0.0.0", port)))
            .unwrap();
        listener.set_nonblocking(true).unwrap();
        let (stop2, peers2) = (stop.clone(), peers.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, peer)) => {
                        peers2.lock().push(peer);
                        std::thread::spawn(move || {
                            let _ = conn.set_nonblocking(false);
                            let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
                            let mut buf = [0u8; 4096];
                            while let Ok(n @ 1..) = conn.read(&mut buf) {
                                if conn.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Echo {
            stop,
            peers,
            thread: Some(thread),
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connects from inside `ns` to `dest`, sends `msg` and returns what came back (bounded).
fn echo_from(ns: &TestNetns, dest: SocketAddr, msg: &'static [u8]) -> std::io::Result<Vec<u8>> {
    ns.run_in(move || {
        let mut s = TcpStream::connect_timeout(&dest, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(msg)?;
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got)?;
        Ok(got)
    })
}

/// The `istio_tcp_connections_opened_total` lines of a ztunnel's /metrics.
fn opened_lines(ns: &TestNetns) -> Vec<String> {
    let metrics = ns.run_in(|| http_get(STATS, "/metrics"));
    metrics
        .lines()
        .filter(|l| l.starts_with("istio_tcp_connections_opened_total{"))
        .map(str::to_string)
        .collect()
}

// ---------- cases ----------

#[test]
fn dedicated_serves_its_own_netns_over_hbone() {
    let (a, b) = two_hosts("hbone");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.yaml"), CONFIG).unwrap();

    // ztunnel for workload A, inside A: ready, its listeners in A, no capture of its own.
    let za = Ztunnel::start(&a, dir.path(), "wa", "sa-a");
    let ports = a.listening_ports();
    for port in [15001, 15006, 15008, 15053] {
        assert!(
            ports.contains(&port),
            "no listener on {port} in A: {ports:?}"
        );
    }
    assert!(a.udp_ports().contains(&15053), "no DNS on udp/15053 in A");
    let ruleset = a.nft_ruleset();
    assert!(
        ruleset.trim().is_empty(),
        "dedicated ztunnel installed nft rules:\n{ruleset}"
    );
    let table = a.exec("nft", &["list", "table", "inet", "amesh"], "");
    assert!(!table.status.success(), "table inet amesh exists in A");
    let rules =
        String::from_utf8_lossy(&a.exec("ip", &["-4", "rule", "list"], "").stdout).into_owned();
    assert!(!rules.contains("lookup 100"), "policy route in A:\n{rules}");
    assert!(
        a.ip(&["-4", "addr", "show", "eth0"]).contains(A_IP),
        "A lost its address"
    );

    // ztunnel for workload B, inside B; an app on B.
    let zb = Ztunnel::start(&b, dir.path(), "wb", "sa-b");
    let echo = Echo::start(&b, ECHO_PORT);
    let dest: SocketAddr = format!("{B_IP}:{ECHO_PORT}").parse().unwrap();

    // The operator's capture on A: A's outbound TCP to B's app goes to 15001, except
    // ztunnel's own (marked) sockets.
    let rule = format!(
        "table ip opcap {{\n  chain out {{\n    type nat hook output priority -100;\n    \
         meta mark & 0xfff != 0x539 ip daddr {B_IP} tcp dport {ECHO_PORT} redirect to :15001\n  }}\n}}\n"
    );
    let out = a.exec("nft", &["-f", "-"], &rule);
    assert!(out.status.success(), "installing capture: {out:?}");

    let got = echo_from(&a, dest, b"hello over hbone").unwrap_or_else(|e| {
        // Let both ztunnels finish logging what they made of it.
        std::thread::sleep(Duration::from_millis(500));
        panic!(
            "A -> B:{ECHO_PORT} failed: {e}{}\n--- A ---\n{}\n--- B ---\n{}",
            vanished(&[&a, &b]),
            za.log(),
            zb.log()
        )
    });
    assert_eq!(got, b"hello over hbone");

    // B's ztunnel took it in over HBONE with mTLS, from A's identity; A's sent it.
    let want = [
        "reporter=\"destination\"",
        "source_principal=\"spiffe://cluster.local/ns/demo/sa/sa-a\"",
        "destination_principal=\"spiffe://cluster.local/ns/demo/sa/sa-b\"",
        "source_workload=\"wa\"",
        "destination_workload=\"wb\"",
        "connection_security_policy=\"mutual_tls\"",
    ];
    let lines = opened_lines(&b);
    assert!(
        lines.iter().any(|l| want.iter().all(|w| l.contains(w))),
        "B's metrics lack the HBONE connection:\n{}",
        lines.join("\n")
    );
    let lines = opened_lines(&a);
    assert!(
        lines.iter().any(|l| l.contains("reporter=\"source\"")
            && l.contains("destination_principal=\"spiffe://cluster.local/ns/demo/sa/sa-b\"")
            && l.contains("connection_security_policy=\"mutual_tls\"")),
        "A's metrics lack the outbound connection:\n{}",
        lines.join("\n")
    );
    // Dedicated mode does not spoof the client's address by default (ENABLE_ORIG_SRC): nothing
    // would route the app's replies back to ztunnel, so B's app sees its own ztunnel.
    let peers = echo.peers.lock().clone();
    assert_eq!(peers.len(), 1, "the app saw {peers:?}");
    assert_eq!(peers[0].ip().to_string(), B_IP, "the app saw {peers:?}");

    // Without capture the same connection goes straight through (no HBONE on B's side).
    run_plain_check(&a, &b, dest);
    drop(echo);
    drop(zb);
    drop(za);
}

/// Removes the operator's capture: A's connection now reaches B directly, and B's ztunnel
/// records nothing new.
fn run_plain_check(a: &TestNetns, b: &TestNetns, dest: SocketAddr) {
    let before = opened_lines(b);
    let out = a.exec("nft", &["delete", "table", "ip", "opcap"], "");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(echo_from(a, dest, b"direct").unwrap(), b"direct");
    assert_eq!(
        opened_lines(b),
        before,
        "an uncaptured connection reached B's ztunnel"
    );
}

#[test]
fn dedicated_workload_missing_from_config_fails_startup() {
    let (a, _b) = two_hosts("missing");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.yaml"), CONFIG).unwrap();
    let mut z = Ztunnel::spawn(&a, dir.path(), "demo/nobody/sa-x");
    let status = z.wait_exit(Duration::from_secs(20));
    assert!(!status.success());
    let log = z.log();
    assert!(log.contains("demo/nobody"), "{log}");
    assert!(a.listening_ports().is_empty(), "listeners left behind");
}
