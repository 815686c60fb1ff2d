//! The real `amesh-cni` binary run as a container runtime runs it, against a real `ztunnel`
//! process and real pod network namespaces: every failure answers CNI's error JSON and leaves
//! the pod untouched; a success captures the pod and DEL releases it.
//!
//! Needs root (network namespaces, nft); namespaces are named `amt-cni-<case>-<pid>` and
//! always deleted, and ztunnel is always killed.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

// ---------- the pod's network namespace ----------

/// A test network namespace, deleted on drop.
struct TestNetns {
    name: String,
    path: PathBuf,
}

impl TestNetns {
    fn new(case: &str) -> TestNetns {
        let name = format!("amt-cni-{case}-{}", std::process::id());
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
        run("ip", &["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    fn exec(&self, program: &str, args: &[&str]) -> String {
        let net = format!("--net={}", self.path.display());
        let mut all = vec![net.as_str(), program];
        all.extend_from_slice(args);
        run("nsenter", &all)
    }

    /// TCP ports listening in the netns (from its /proc/net/tcp{,6}: state 0A is LISTEN).
    fn listening_ports(&self) -> HashSet<u16> {
        let mut ports = HashSet::new();
        for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
            for line in self.exec("cat", &[file]).lines().skip(1) {
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

    /// No nft rules, no capture listeners, no policy route: as the runtime created it.
    fn assert_untouched(&self) {
        let ruleset = self.exec("nft", &["list", "ruleset"]);
        assert!(
            ruleset.trim().is_empty(),
            "nft rules left behind:\n{ruleset}"
        );
        let ports = self.listening_ports();
        for port in [15001, 15006, 15008, 15053] {
            assert!(!ports.contains(&port), "listener on {port} left behind");
        }
        for family in ["-4", "-6"] {
            let rules = self.exec("ip", &[family, "rule", "list"]);
            assert!(!rules.contains("lookup 100"), "policy route left:\n{rules}");
        }
    }

    fn assert_captured(&self) {
        let table = self.exec("nft", &["list", "table", "inet", "amesh"]);
        assert!(table.contains("redirect to :15001"), "{table}");
        let ports = self.listening_ports();
        for port in [15001, 15006, 15008] {
            assert!(ports.contains(&port), "no listener on {port}: {ports:?}");
        }
        let rules = self.exec("ip", &["-4", "rule", "list"]);
        assert!(rules.contains("fwmark 0x111/0xfff lookup 100"), "{rules}");
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

// ---------- a real ztunnel ----------

/// A ztunnel process on its own temp dir and ports, killed on drop.
struct Ztunnel {
    child: Child,
    dir: tempfile::TempDir,
    cni_socket: PathBuf,
}

impl Ztunnel {
    /// Starts ztunnel with `workloads` (local-file YAML) and waits until it is ready.
    fn start(workloads: &str) -> Ztunnel {
        Ztunnel::start_with(workloads, None)
    }

    /// Same, with `nft` replaced by a shell script (to make capture fail).
    fn start_with(workloads: &str, nft_script: Option<&str>) -> Ztunnel {
        Ztunnel::start_waiting(workloads, nft_script, 1)
    }

    /// Same, with ADD waiting up to `config_wait_secs` for an unknown pod's configuration.
    fn start_waiting(workloads: &str, nft_script: Option<&str>, config_wait_secs: u64) -> Ztunnel {
        let dir = tempfile::tempdir().unwrap();
        let mut path = std::env::var("PATH").unwrap_or_default();
        if let Some(script) = nft_script {
            let bin = dir.path().join("bin");
            std::fs::create_dir(&bin).unwrap();
            let nft = bin.join("nft");
            std::fs::write(&nft, script).unwrap();
            let mut perms = std::fs::metadata(&nft).unwrap().permissions();
            std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
            std::fs::set_permissions(&nft, perms).unwrap();
            path = format!("{}:{path}", bin.display());
        }
        let config = dir.path().join("config.yaml");
        std::fs::write(&config, workloads).unwrap();
        let cni_socket = dir.path().join("amesh-cni.sock");
        let [admin, stats, ready] = free_ports();
        let log = std::fs::File::create(dir.path().join("ztunnel.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_ztunnel"))
            .env_clear()
            // ztunnel runs nsenter, nft and ip.
            .env("PATH", path)
            .env("LOCAL_XDS_PATH", &config)
            .env("LOCAL_CA_DIR", dir.path().join("ca"))
            .env("NODE_NAME", "node1")
            // These tests fail capture through a fake `nft`; unset, the mode would be eBPF.
            .env("CAPTURE_MODE", "nft")
            .env("AMESH_CNI_SOCKET", &cni_socket)
            .env("AMESH_STATE_FILE", dir.path().join("pods.json"))
            .env(
                "AMESH_POD_CONFIG_WAIT_SECONDS",
                config_wait_secs.to_string(),
            )
            .env("ADMIN_ADDR", admin.to_string())
            .env("STATS_ADDR", stats.to_string())
            .env("READINESS_ADDR", ready.to_string())
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut z = Ztunnel {
            child,
            dir,
            cni_socket,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !is_ready(ready) {
            if let Some(status) = z.child.try_wait().unwrap() {
                panic!("ztunnel exited ({status}):\n{}", z.log());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "ztunnel not ready:\n{}",
                z.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        z
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("ztunnel.log")).unwrap_or_default()
    }

    fn state_file(&self) -> Value {
        let bytes = std::fs::read(self.dir.path().join("pods.json")).unwrap_or_default();
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    }
}

impl Drop for Ztunnel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- ztunnel log ---\n{}", self.log());
        }
    }
}

/// Three loopback ports free right now (bound to port 0, then released).
fn free_ports() -> [SocketAddr; 3] {
    let listeners: Vec<TcpListener> = (0..3)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    [0, 1, 2].map(|i| listeners[i].local_addr().unwrap())
}

fn is_ready(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /healthz/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200")
}

fn workload(name: &str, ip: &str, protocol: &str) -> String {
    format!(
        "- name: {name}\n  namespace: demo\n  serviceAccount: {name}\n  workloadIps: [{ip}]\n  protocol: {protocol}\n  node: node1\n"
    )
}

// ---------- the plugin ----------

struct Outcome {
    status: std::process::ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `amesh-cni` with the runtime's environment and `stdin`.
fn plugin(env: &[(&str, &str)], stdin: &str) -> Outcome {
    let mut child = Command::new(env!("CARGO_BIN_EXE_amesh-cni"))
        .env_clear()
        .envs(env.iter().copied())
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
    let out = child.wait_with_output().unwrap();
    Outcome {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The environment of a runtime's ADD/DEL for pod `demo/<name>`.
fn runtime_env<'a>(command: &'a str, netns: &'a str, args: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", "c0ffee"),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
        ("CNI_ARGS", args),
    ]
}

fn pod_args(name: &str) -> String {
    format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME={name};K8S_POD_UID=uid-{name}")
}

fn prev_result(ip: &str) -> Value {
    json!({"cniVersion": "1.0.0", "interfaces": [{"name": "eth0"}],
           "ips": [{"address": format!("{ip}/32"), "interface": 0}]})
}

fn net_conf(socket: &Path, prev: Option<Value>) -> String {
    let mut conf = json!({"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "amesh-cni",
                          "ztunnel_socket": socket});
    if let Some(prev) = prev {
        conf["prevResult"] = prev;
    }
    conf.to_string()
}

/// A failed invocation: non-zero exit and CNI's error JSON with `code` on stdout.
fn assert_cni_error(out: &Outcome, code: u64) -> Value {
    assert!(
        !out.status.success(),
        "expected failure, got {}",
        out.stdout
    );
    let err: Value = serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}", out.stdout));
    assert_eq!(err["code"], code, "{err}");
    assert_eq!(err["cniVersion"], "1.0.0", "{err}");
    for field in ["msg", "details"] {
        assert!(
            err[field].as_str().is_some_and(|s| !s.is_empty()),
            "{field} missing: {err}"
        );
    }
    assert!(!out.stderr.is_empty(), "no diagnostic on stderr");
    err
}

// ---------- cases ----------

#[test]
fn version_lists_supported_versions() {
    let out = plugin(&[("CNI_COMMAND", "VERSION")], "");
    assert!(out.status.success());
    let v: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    let versions = v["supportedVersions"].as_array().unwrap();
    for want in ["0.4.0", "1.0.0"] {
        assert!(versions.iter().any(|x| x == want), "{v}");
    }
}

#[test]
fn bad_input_fails_without_touching_the_pod() {
    let ns = TestNetns::new("bad");
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("amesh-cni.sock");
    let netns = ns.path.to_str().unwrap();
    let args = pod_args("web");
    let env = runtime_env("ADD", netns, &args);
    let good = net_conf(&socket, Some(prev_result("10.78.0.9")));

    // Malformed JSON on stdin: decoding error.
    assert_cni_error(&plugin(&env, "{\"cniVersion\": \"1.0.0\", "), 6);
    // A configuration meant for another plugin.
    let other = good.replace("\"amesh-cni\"", "\"bridge\"");
    assert_cni_error(&plugin(&env, &other), 7);
    // Chained plugin without prevResult.
    assert_cni_error(&plugin(&env, &net_conf(&socket, None)), 7);
    // No CNI_NETNS: invalid environment.
    let no_netns: Vec<_> = env
        .iter()
        .copied()
        .filter(|(k, _)| *k != "CNI_NETNS")
        .collect();
    assert_cni_error(&plugin(&no_netns, &good), 4);
    // A netns that does not exist: unknown container.
    let gone = format!("{netns}-gone");
    let err = assert_cni_error(&plugin(&runtime_env("ADD", &gone, &args), &good), 3);
    assert!(err["details"].as_str().unwrap().contains(&gone), "{err}");
    // Nobody listening on the socket: try again later.
    let err = assert_cni_error(&plugin(&env, &good), 11);
    assert!(
        err["details"].as_str().unwrap().contains("amesh-cni.sock"),
        "{err}"
    );
    // A stale socket file of a dead ztunnel: the same.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert_cni_error(&plugin(&env, &good), 11);

    ns.assert_untouched();
}

#[test]
fn pod_unknown_to_ztunnel_is_refused_and_left_untouched() {
    let ns = TestNetns::new("refused");
    // The config knows another pod, not this one.
    let z = Ztunnel::start(&format!(
        "workloads:\n{}",
        workload("other", "10.78.1.2", "HBONE")
    ));
    let args = pod_args("web");
    let env = runtime_env("ADD", ns.path.to_str().unwrap(), &args);
    let conf = net_conf(&z.cni_socket, Some(prev_result("10.78.1.3")));
    let started = tokio::time::Instant::now();
    let err = assert_cni_error(&plugin(&env, &conf), 100);
    assert!(
        err["details"]
            .as_str()
            .unwrap()
            .contains("not in ztunnel's configuration"),
        "{err}"
    );
    // AMESH_POD_CONFIG_WAIT_SECONDS=1 bounds the wait.
    assert!(started.elapsed() < Duration::from_secs(10));
    ns.assert_untouched();
    assert_eq!(z.state_file(), Value::Null, "refused pod was persisted");
}

#[test]
fn add_captures_and_del_releases() {
    let ns = TestNetns::new("ok");
    let z = Ztunnel::start(&format!(
        "workloads:\n{}",
        workload("web", "10.78.2.4", "HBONE")
    ));
    let netns = ns.path.to_str().unwrap();
    let args = pod_args("web");
    let prev = prev_result("10.78.2.4");
    let conf = net_conf(&z.cni_socket, Some(prev.clone()));

    // A path that exists but is no network namespace: ztunnel cannot enter it.
    let not_netns = z.dir.path().join("config.yaml");
    let bogus = runtime_env("ADD", not_netns.to_str().unwrap(), &args);
    let err = assert_cni_error(&plugin(&bogus, &conf), 100);
    assert!(
        err["details"]
            .as_str()
            .unwrap()
            .contains("network namespace"),
        "{err}"
    );
    ns.assert_untouched();

    let out = plugin(&runtime_env("ADD", netns, &args), &conf);
    assert!(
        out.status.success(),
        "ADD failed: {} {}",
        out.stdout,
        out.stderr
    );
    let result: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(result, prev, "ADD must pass prevResult through");
    ns.assert_captured();
    assert_eq!(z.state_file()[0]["uid"], "uid-web");

    // A runtime retry of the same ADD is harmless.
    let out = plugin(&runtime_env("ADD", netns, &args), &conf);
    assert!(out.status.success(), "{}", out.stdout);
    ns.assert_captured();

    let out = plugin(&runtime_env("DEL", netns, &args), &conf);
    assert!(
        out.status.success(),
        "DEL failed: {} {}",
        out.stdout,
        out.stderr
    );
    ns.assert_untouched();
    assert_eq!(z.state_file(), json!([]));
}

#[test]
fn del_without_ztunnel_succeeds() {
    // DEL must not block pod deletion when ztunnel is down: nothing of ours can be running.
    let dir = tempfile::tempdir().unwrap();
    let conf = net_conf(&dir.path().join("none.sock"), None);
    let args = pod_args("web");
    let out = plugin(&runtime_env("DEL", "/var/run/netns/gone", &args), &conf);
    assert!(out.status.success(), "{}", out.stdout);
    assert!(out.stdout.trim().is_empty());
}

/// Where the real nft is, for the stub to delegate to.
fn real_nft() -> String {
    run("sh", &["-c", "command -v nft"]).trim().to_string()
}

#[test]
fn failed_capture_is_rolled_back() {
    // nft refuses the capture ruleset (listeners and the policy route are in place by then)
    // but works for everything else, so ztunnel's rollback can run.
    let script = format!(
        "#!/bin/sh\nif [ \"$1\" = -f ]; then\n  input=$(cat)\n  case \"$input\" in *chain*) echo 'Error: injected failure' >&2; exit 1;; esac\n  printf '%s\\n' \"$input\" | exec {nft} -f -\nfi\nexec {nft} \"$@\"\n",
        nft = real_nft()
    );
    let ns = TestNetns::new("rollback");
    let z = Ztunnel::start_with(
        &format!("workloads:\n{}", workload("web", "10.78.3.4", "HBONE")),
        Some(&script),
    );
    let args = pod_args("web");
    let env = runtime_env("ADD", ns.path.to_str().unwrap(), &args);
    let conf = net_conf(&z.cni_socket, Some(prev_result("10.78.3.4")));
    let err = assert_cni_error(&plugin(&env, &conf), 100);
    assert!(
        err["details"]
            .as_str()
            .unwrap()
            .contains("injected failure"),
        "{err}"
    );
    ns.assert_untouched();
    assert_eq!(z.state_file(), Value::Null, "failed pod was persisted");
}

#[test]
fn missing_nft_is_rolled_back() {
    // No working nft at all: the rollback cannot use nft either, and must still undo the rest.
    let ns = TestNetns::new("nonft");
    let z = Ztunnel::start_with(
        &format!("workloads:\n{}", workload("web", "10.78.4.4", "HBONE")),
        Some("#!/bin/sh\necho 'Error: injected failure' >&2\nexit 1\n"),
    );
    let args = pod_args("web");
    let env = runtime_env("ADD", ns.path.to_str().unwrap(), &args);
    let conf = net_conf(&z.cni_socket, Some(prev_result("10.78.4.4")));
    assert_cni_error(&plugin(&env, &conf), 100);
    ns.assert_untouched();
}

/// Sends one request straight to ztunnel's node-agent socket (as anything that can reach the
/// socket could, bypassing the plugin's own checks) and returns the response line.
fn agent_request(socket: &Path, request: &Value) -> Value {
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(format!("{request}\n").as_bytes()).unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(s), &mut line).unwrap();
    serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

#[test]
fn add_naming_a_netns_that_is_not_a_pods_is_refused() {
    // The workload exists in the config, so ztunnel would capture whatever netns it is given.
    let z = Ztunnel::start(&format!(
        "workloads:\n{}",
        workload("victim", "10.99.0.5", "HBONE")
    ));
    let ztunnel_mnt = format!("/proc/{}/ns/mnt", z.child.id());
    for (netns, why) in [
        // Relative to ztunnel: its own.
        ("/proc/self/ns/net", "ztunnel's own"),
        ("/proc/thread-self/ns/net", "ztunnel's own"),
        ("/etc/hostname", "not a network namespace"),
        (ztunnel_mnt.as_str(), "not a network namespace"),
        ("/proc", "not a network namespace"),
    ] {
        let answer = agent_request(
            &z.cni_socket,
            &json!({"op": "add", "container_id": "c0ffee", "uid": "uid-victim", "name": "victim",
                    "namespace": "demo", "ip": "10.99.0.5", "netns": netns}),
        );
        assert_eq!(
            answer["result"], "error",
            "ADD with netns {netns}: {answer}"
        );
        let message = answer["message"].as_str().unwrap_or_default();
        assert!(message.contains(why), "ADD with netns {netns}: {message}");
    }
    // Through the plugin: the host's netns is the one the runtime runs it in.
    let env = runtime_env("ADD", "/proc/self/ns/net", "");
    let args = pod_args("victim");
    let mut env = env;
    env.retain(|(k, _)| *k != "CNI_ARGS");
    env.push(("CNI_ARGS", &args));
    let out = plugin(
        &env,
        &net_conf(&z.cni_socket, Some(prev_result("10.99.0.5"))),
    );
    let err = assert_cni_error(&out, 4);
    assert!(err["msg"].as_str().unwrap().contains("host's"), "{err}");
    // Nothing was captured: no capture table here (ztunnel runs in this netns), no capture
    // listener of ztunnel's, nothing persisted.
    let tables = run("nft", &["list", "tables"]);
    assert!(
        !tables.contains("inet amesh"),
        "capture installed on the host:\n{tables}"
    );
    let listening = std::fs::read_to_string(format!("/proc/{}/net/tcp", z.child.id())).unwrap();
    for port in [15001u16, 15006, 15008] {
        let hex = format!(":{port:04X} ");
        assert!(
            !listening.lines().any(|l| l
                .split_whitespace()
                .nth(1)
                .is_some_and(|a| format!("{a} ").contains(&hex))
                && l.split_whitespace().nth(3) == Some("0A")),
            "a listener on {port} in the host's netns"
        );
    }
    assert!(
        z.state_file().as_array().is_none_or(|a| a.is_empty()),
        "{}",
        z.state_file()
    );
}

// ---------- the plugin with the Kubernetes API ----------

/// The lab's stand-in API server on loopback, answering from a manifests folder; with the
/// kubeconfig a plugin uses to reach it.
struct Api {
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
    _runtime: tokio::runtime::Runtime,
}

impl Api {
    fn start(manifests: &str) -> Api {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("manifests");
        std::fs::create_dir(&folder).unwrap();
        std::fs::write(folder.join("objects.yaml"), manifests).unwrap();
        let ca_dir = dir.path().join("ca");
        let tls = lab::apiserver::tls_config(&ca_dir, &["127.0.0.1".into()]).unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let server = lab::apiserver::ApiServer {
            manifests: folder,
            token: "plugin-token".into(),
        };
        runtime.spawn(server.serve(listener, tls));
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            lab::apiserver::kubeconfig(
                &format!("https://{addr}"),
                &ca_dir.join(mesh::certs::ROOT_CERT_FILE),
                "plugin-token",
            ),
        )
        .unwrap();
        Api {
            dir,
            kubeconfig,
            _runtime: runtime,
        }
    }
}

const CLUSTER: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: plain}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: demo}
spec: {serviceAccountName: web-sa, nodeName: node1, containers: [{name: c, image: x}]}
---
apiVersion: v1
kind: Pod
metadata: {name: opted-out, namespace: demo, labels: {istio.io/dataplane-mode: none}}
spec: {nodeName: node1, containers: [{name: c, image: x}]}
---
apiVersion: v1
kind: Pod
metadata: {name: plain-web, namespace: plain}
spec: {nodeName: node1, containers: [{name: c, image: x}]}
---
apiVersion: v1
kind: Pod
metadata: {name: ztunnel-node1, namespace: istio-system, labels: {app: ztunnel}}
spec: {nodeName: node1, containers: [{name: c, image: x}]}
---
apiVersion: v1
kind: Pod
metadata: {name: coredns, namespace: kube-system}
spec: {nodeName: node1, containers: [{name: c, image: x}]}
";

fn net_conf_with_api(socket: &Path, prev: Value, kubeconfig: &Path) -> String {
    let mut conf: Value = serde_json::from_str(&net_conf(socket, Some(prev))).unwrap();
    conf["kubeconfig"] = json!(kubeconfig);
    conf.to_string()
}

fn pod_args_in(namespace: &str, name: &str) -> String {
    format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name};K8S_POD_UID=uid-{name}"
    )
}

#[test]
fn pods_outside_the_mesh_start_without_ztunnel() {
    let api = Api::start(CLUSTER);
    let ns = TestNetns::new("apileave");
    let netns = ns.path.to_str().unwrap();
    // No ztunnel at all on this "node".
    let socket = api.dir.path().join("nobody.sock");
    for (namespace, name) in [
        ("kube-system", "coredns"),
        ("istio-system", "ztunnel-node1"),
        ("plain", "plain-web"),
        ("demo", "opted-out"),
    ] {
        let args = pod_args_in(namespace, name);
        let prev = prev_result("10.78.4.2");
        let out = plugin(
            &runtime_env("ADD", netns, &args),
            &net_conf_with_api(&socket, prev.clone(), &api.kubeconfig),
        );
        assert!(
            out.status.success(),
            "{namespace}/{name}: {} {}",
            out.stdout,
            out.stderr
        );
        let result: Value = serde_json::from_str(out.stdout.trim()).unwrap();
        assert_eq!(result["ips"], prev["ips"], "{namespace}/{name}");
    }
    // An excluded namespace needs not even the API: a node whose API access is broken still
    // starts its system pods.
    let args = pod_args_in("kube-system", "coredns");
    let broken = api.dir.path().join("missing-kubeconfig");
    let out = plugin(
        &runtime_env("ADD", netns, &args),
        &net_conf_with_api(&socket, prev_result("10.78.4.3"), &broken),
    );
    assert!(out.status.success(), "{} {}", out.stdout, out.stderr);
    ns.assert_untouched();
}

#[test]
fn an_ambient_pod_is_captured_before_the_control_plane_knows_it() {
    let api = Api::start(CLUSTER);
    let ns = TestNetns::new("apiadd");
    // ztunnel's configuration knows nothing of the pod (as on a cluster, where the pod gets
    // its IP from this very ADD).
    // ADD would wait a minute for the configuration: done well within it means nothing
    // waited (a bound far from any scheduling delay on a loaded machine).
    let z = Ztunnel::start_waiting("workloads: []\n", None, 60);
    let args = pod_args_in("demo", "web");
    let conf = net_conf_with_api(&z.cni_socket, prev_result("10.78.5.6"), &api.kubeconfig);
    let started = tokio::time::Instant::now();
    let out = plugin(&runtime_env("ADD", ns.path.to_str().unwrap(), &args), &conf);
    assert!(
        out.status.success(),
        "{} {}\n{}",
        out.stdout,
        out.stderr,
        z.log()
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "ADD took {:?}",
        started.elapsed()
    );
    ns.assert_captured();
    let saved = z.state_file();
    assert_eq!(saved[0]["service_account"], "web-sa", "{saved}");
    assert_eq!(saved[0]["ip"], "10.78.5.6", "{saved}");
}

#[test]
fn an_ambient_pod_fails_cleanly_while_ztunnel_or_the_api_is_down() {
    let api = Api::start(CLUSTER);
    let ns = TestNetns::new("apidown");
    let netns = ns.path.to_str().unwrap();
    let args = pod_args_in("demo", "web");
    // ztunnel down: try again (the kubelet retries the sandbox).
    let socket = api.dir.path().join("nobody.sock");
    let out = plugin(
        &runtime_env("ADD", netns, &args),
        &net_conf_with_api(&socket, prev_result("10.78.6.2"), &api.kubeconfig),
    );
    let err = assert_cni_error(&out, 11);
    assert!(err["msg"].as_str().unwrap().contains("ztunnel"), "{err}");
    // The API down: try again too, saying which API.
    let dead = api.dir.path().join("dead-kubeconfig");
    std::fs::write(
        &dead,
        lab::apiserver::kubeconfig(
            "https://127.0.0.1:1",
            &api.dir.path().join("ca").join(mesh::certs::ROOT_CERT_FILE),
            "x",
        ),
    )
    .unwrap();
    let out = plugin(
        &runtime_env("ADD", netns, &args),
        &net_conf_with_api(&socket, prev_result("10.78.6.2"), &dead),
    );
    let err = assert_cni_error(&out, 11);
    assert!(
        err["details"].as_str().unwrap().contains("127.0.0.1:1"),
        "{err}"
    );
    // A pod the API does not know: try again (it may not be visible yet).
    let args = pod_args_in("demo", "nobody");
    let out = plugin(
        &runtime_env("ADD", netns, &args),
        &net_conf_with_api(&socket, prev_result("10.78.6.3"), &api.kubeconfig),
    );
    assert_cni_error(&out, 11);
    ns.assert_untouched();
}

// ---------- abuse of the node-agent socket ----------

/// Sends `bytes` as they are (from another thread, since a huge write may block until ztunnel
/// has given up reading) and returns ztunnel's answer.
fn agent_raw(socket: &Path, bytes: Vec<u8>) -> Value {
    let s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut writer = s.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        // ztunnel stops reading past its limit and closes: a broken pipe is expected.
        let _ = writer.write_all(&bytes);
    });
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(&s), &mut line).unwrap();
    let _ = s.shutdown(std::net::Shutdown::Both);
    sender.join().unwrap();
    serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

fn del_request(uid: &str) -> Value {
    json!({"op": "del", "container_id": "c0ffee", "uid": uid, "name": "gone",
           "namespace": "demo"})
}

#[test]
fn malformed_and_huge_lines_get_an_error_and_the_agent_keeps_serving() {
    let z = Ztunnel::start("workloads: []\n");
    // A valid request padded past the 64 KiB limit: refused whole, never parsed cut short
    // (cut at 64 KiB it would be "EOF while parsing", i.e. read as a truncated request).
    let padded = format!(
        "{{\"op\": \"del\", \"container_id\": \"{}\", \"uid\": \"u\", \"name\": \"n\", \"namespace\": \"d\"}}\n",
        "c".repeat(70 << 10)
    );
    let huge = vec![b'x'; 10 << 20];
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "padded past the limit",
            padded.into_bytes(),
            "longer than 64 KiB",
        ),
        ("10 MiB without a newline", huge, "longer than 64 KiB"),
        ("not JSON", b"ADD please\n".to_vec(), "malformed request"),
        (
            "wrong types",
            b"{\"op\": \"del\", \"container_id\": 7, \"uid\": [], \"name\": null}\n".to_vec(),
            "malformed request",
        ),
        (
            "unknown op",
            b"{\"op\": \"format\"}\n".to_vec(),
            "malformed request",
        ),
        (
            "not UTF-8",
            b"{\"op\": \"\xff\xfe\"}\n".to_vec(),
            "not UTF-8",
        ),
        ("empty line", b"\n".to_vec(), "malformed request"),
    ];
    for (case, bytes, expected) in cases {
        let answer = agent_raw(&z.cni_socket, bytes);
        assert_eq!(answer["result"], "error", "{case}: {answer}");
        let message = answer["message"].as_str().unwrap_or_default();
        assert!(message.contains(expected), "{case}: {message}");
    }
    // Still serving, and a request of exactly the limit's size is still read whole.
    let answer = agent_request(&z.cni_socket, &del_request("uid-gone"));
    assert_eq!(answer["result"], "ok", "{answer}");
    let mut exact = serde_json::to_string(&del_request("uid-gone")).unwrap();
    let pad = (64 << 10) - exact.len();
    exact.insert_str(1, &" ".repeat(pad));
    assert_eq!(exact.len(), 64 << 10);
    let answer = agent_raw(&z.cni_socket, format!("{exact}\n").into_bytes());
    assert_eq!(
        answer["result"], "ok",
        "a request of exactly 64 KiB: {answer}"
    );
}

/// ztunnel's open descriptors.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[test]
fn a_flood_of_connections_holds_a_bounded_number_of_descriptors() {
    let z = Ztunnel::start("workloads: []\n");
    let before = open_fds(z.child.id());
    // Silent clients, each holding a connection until ztunnel's read timeout: past the
    // agent's limit (64) they wait in the listen queue instead of each taking a descriptor.
    let flood: Vec<_> = (0..300)
        .map(|_| std::os::unix::net::UnixStream::connect(&z.cni_socket).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let during = open_fds(z.child.id());
    assert!(
        during <= before + 64 + 8,
        "{before} descriptors before, {during} with 300 silent clients"
    );
    drop(flood);
    // Once the flood is gone the agent answers again.
    let answer = agent_request(&z.cni_socket, &del_request("uid-gone"));
    assert_eq!(answer["result"], "ok", "{answer}");
}
