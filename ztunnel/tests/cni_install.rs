//! `amesh-cni install` on real files: the real binary installs itself into a temporary CNI
//! bin dir and adds amesh to the primary config of a temporary conf dir, for the configs real
//! nodes carry (bridge, Calico, Cilium, a single-plugin `.conf`), keeps it there while another
//! agent rewrites the configs, refuses a malformed config without crashing, takes everything
//! out again on SIGTERM with `--uninstall-on-exit`, and the chain it writes really runs the
//! plugin it installed.
//!
//! Each case works in its own temporary directory (removed on drop) and kills the installer
//! it started; no root needed.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use tokio::time::Instant;

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_amesh-cni");
/// Longest a condition may take to come true (a bound, not an expectation).
const WAIT: Duration = Duration::from_secs(20);

/// A node's CNI dirs in a temporary directory.
struct Node {
    dir: tempfile::TempDir,
}

impl Node {
    fn new() -> Node {
        let node = Node {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir_all(node.conf()).unwrap();
        node
    }

    fn conf(&self) -> PathBuf {
        self.dir.path().join("net.d")
    }

    fn bin(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("ztunnel.sock")
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.conf().join(name), text).unwrap();
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.conf().join(name)).unwrap()
    }

    fn json(&self, name: &str) -> Value {
        serde_json::from_str(&self.read(name)).unwrap()
    }

    fn exists(&self, name: &str) -> bool {
        self.conf().join(name).exists()
    }

    /// The installer's command with this node's dirs.
    fn command(&self, extra: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.arg("install")
            .arg("--cni-conf-dir")
            .arg(self.conf())
            .arg("--cni-bin-dir")
            .arg(self.bin())
            .arg("--ztunnel-socket")
            .arg(self.socket())
            .args(extra)
            .env_remove("CNI_COMMAND")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env("RUST_LOG", "info");
        cmd
    }

    /// `install --once`.
    fn install_once(&self, extra: &[&str]) -> Output {
        self.command(&[&["--once"], extra].concat())
            .output()
            .unwrap()
    }

    /// `install --check`: whether it reports installed.
    fn check(&self) -> bool {
        self.command(&["--check"])
            .output()
            .unwrap()
            .status
            .success()
    }

    /// The installer running in watch mode, its output in a file.
    fn start(&self, extra: &[&str]) -> Installer {
        self.spawn(self.command(extra))
    }

    /// Runs `cmd` (an installer command), its output in a file.
    fn spawn(&self, mut cmd: Command) -> Installer {
        let log = self
            .dir
            .path()
            .join(format!("installer-{}.log", rand_suffix()));
        let out = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Installer { child, log }
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// A running `amesh-cni install`, killed on drop.
struct Installer {
    child: Child,
    log: PathBuf,
}

impl Installer {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn sigterm(&self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    }

    /// Waits for the exit (bounded) and returns its code.
    fn wait_exit(&mut self) -> i32 {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().expect("exited by a signal, not by itself");
            }
            assert!(
                start.elapsed() < WAIT,
                "the installer did not exit:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Installer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `cond` until it holds; panics naming `what` after [`WAIT`].
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < WAIT, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn types(list: &Value) -> Vec<String> {
    list["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["type"].as_str().unwrap().to_string())
        .collect()
}

fn has_amesh(node: &Node, name: &str) -> bool {
    node.exists(name)
        && serde_json::from_str::<Value>(&node.read(name)).is_ok_and(|v| {
            v["plugins"]
                .as_array()
                .is_some_and(|p| p.iter().any(|p| p["type"] == "amesh-cni"))
        })
}

fn without_amesh(mut list: Value) -> Value {
    let plugins = list["plugins"].as_array_mut().unwrap();
    plugins.retain(|p| p["type"] != "amesh-cni");
    list
}

fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "install failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

const BRIDGE: &str = r#"{
  "cniVersion": "1.0.0",
  "name": "bridge-net",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.1.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}"#;

const CALICO: &str = r#"{
  "name": "k8s-pod-network",
  "cniVersion": "0.3.1",
  "plugins": [
    {"type": "calico", "log_level": "info", "datastore_type": "kubernetes", "nodename": "node-1",
     "mtu": 1440, "ipam": {"type": "calico-ipam"}, "policy": {"type": "k8s"},
     "kubernetes": {"kubeconfig": "/etc/cni/net.d/calico-kubeconfig"}},
    {"type": "portmap", "snat": true, "capabilities": {"portMappings": true}},
    {"type": "bandwidth", "capabilities": {"bandwidth": true}}
  ]
}"#;

const CILIUM: &str = r#"{
  "cniVersion": "0.3.1",
  "name": "cilium",
  "plugins": [
    {"type": "cilium-cni", "enable-debug": false, "log-file": "/var/run/cilium/cilium-cni.log"}
  ]
}"#;

const BRIDGE_CONF: &str = r#"{
    "cniVersion": "0.4.0",
    "name": "mynet",
    "type": "bridge",
    "bridge": "cni0",
    "isGateway": true,
    "ipam": {"type": "host-local", "subnet": "10.22.0.0/16"}
}
"#;

#[test]
fn bridge_conflist_gets_amesh_last_and_keeps_the_rest() {
    let node = Node::new();
    node.write("10-bridge.conflist", BRIDGE);
    assert!(!node.check(), "--check passes before anything is installed");
    assert_ok(&node.install_once(&[]));

    let list = node.json("10-bridge.conflist");
    assert_eq!(types(&list), ["bridge", "portmap", "amesh-cni"]);
    assert_eq!(
        list["plugins"][2],
        json!({"type": "amesh-cni", "ztunnel_socket": node.socket()})
    );
    let original: Value = serde_json::from_str(BRIDGE).unwrap();
    assert_eq!(without_amesh(list), original);
    // The file's key order is kept (serde_json's Value would sort it).
    let text = node.read("10-bridge.conflist");
    let at = |k: &str| text.find(&format!("\"{k}\"")).unwrap();
    assert!(at("cniVersion") < at("name") && at("name") < at("plugins"));
    assert!(at("isGateway") < at("ipMasq") && at("ipMasq") < at("ipam"));

    let installed = node.bin().join("amesh-cni");
    let mode = std::fs::metadata(&installed).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o755);
    assert_eq!(
        std::fs::read(&installed).unwrap(),
        std::fs::read(BIN).unwrap()
    );
    assert!(node.check(), "--check fails after the install");
}

#[test]
fn calico_chain_keeps_its_plugins_in_order() {
    let node = Node::new();
    node.write("10-calico.conflist", CALICO);
    node.write("calico-kubeconfig", "not a CNI config");
    assert_ok(&node.install_once(&["--exclude-namespaces", "kube-system,calico-system"]));
    let list = node.json("10-calico.conflist");
    assert_eq!(
        types(&list),
        ["calico", "portmap", "bandwidth", "amesh-cni"]
    );
    assert_eq!(
        list["plugins"][3]["exclude_namespaces"],
        json!(["kube-system", "calico-system"])
    );
    assert_eq!(
        without_amesh(list),
        serde_json::from_str::<Value>(CALICO).unwrap()
    );
    assert_eq!(node.read("calico-kubeconfig"), "not a CNI config");
}

#[test]
fn cilium_conflist_sorts_first_and_is_the_only_one_changed() {
    let node = Node::new();
    node.write("05-cilium.conflist", CILIUM);
    node.write("10-bridge.conflist", BRIDGE);
    // JSON that is no CNI config, sorted first: skipped, untouched.
    node.write("00-notes.json", r#"{"owner": "ops"}"#);
    node.write("01-readme.txt", "not even JSON");
    assert_ok(&node.install_once(&[]));
    assert_eq!(
        types(&node.json("05-cilium.conflist")),
        ["cilium-cni", "amesh-cni"]
    );
    assert_eq!(node.read("10-bridge.conflist"), BRIDGE);
    assert_eq!(node.read("00-notes.json"), r#"{"owner": "ops"}"#);
}

#[test]
fn single_conf_is_converted_then_restored_on_uninstall() {
    let node = Node::new();
    node.write("10-bridge.conf", BRIDGE_CONF);
    let mut installer = node.start(&["--uninstall-on-exit"]);
    wait_until("the .conf is converted", || {
        has_amesh(&node, "10-bridge.conflist")
    });
    assert!(
        !node.exists("10-bridge.conf"),
        "the converted .conf is still there"
    );
    let list = node.json("10-bridge.conflist");
    assert_eq!(
        list,
        json!({
            "cniVersion": "0.4.0",
            "name": "mynet",
            "plugins": [
                {"type": "bridge", "bridge": "cni0", "isGateway": true,
                 "ipam": {"type": "host-local", "subnet": "10.22.0.0/16"}},
                {"type": "amesh-cni", "ztunnel_socket": node.socket()},
            ]
        })
    );
    assert!(node.check());

    installer.sigterm();
    assert_eq!(installer.wait_exit(), 0, "{}", installer.log());
    assert_eq!(
        node.read("10-bridge.conf"),
        BRIDGE_CONF,
        "not restored byte for byte"
    );
    assert!(!node.exists("10-bridge.conflist"));
    assert!(!node.exists("10-bridge.conf.amesh-cni-original"));
    assert!(
        !node.bin().join("amesh-cni").exists(),
        "the copied binary is still there"
    );
    let left: Vec<_> = std::fs::read_dir(node.conf())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["10-bridge.conf"]);
}

#[test]
fn a_converted_conf_changed_since_stays_a_list_on_uninstall() {
    let node = Node::new();
    node.write("10-bridge.conf", BRIDGE_CONF);
    let mut installer = node.start(&["--uninstall-on-exit"]);
    wait_until("the .conf is converted", || {
        has_amesh(&node, "10-bridge.conflist")
    });
    // The network agent adds a plugin to the list (without amesh, as agents do).
    let mut changed = without_amesh(node.json("10-bridge.conflist"));
    changed["plugins"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "portmap", "capabilities": {"portMappings": true}}));
    node.write("10-bridge.conflist", &changed.to_string());
    wait_until("amesh is back", || has_amesh(&node, "10-bridge.conflist"));

    installer.sigterm();
    assert_eq!(installer.wait_exit(), 0, "{}", installer.log());
    // The agent's change is kept; the old single-plugin file would lose it.
    assert_eq!(node.json("10-bridge.conflist"), changed);
    assert!(!node.exists("10-bridge.conf"));
    assert!(!node.exists("10-bridge.conf.amesh-cni-original"));
}

#[test]
fn installing_twice_leaves_one_entry_and_replaces_an_old_one() {
    let node = Node::new();
    // An entry from an older install, in the middle, with another socket.
    let mut old: Value = serde_json::from_str(CALICO).unwrap();
    old["plugins"].as_array_mut().unwrap().insert(
        1,
        json!({"type": "amesh-cni", "ztunnel_socket": "/old.sock"}),
    );
    node.write("10-calico.conflist", &old.to_string());
    assert_ok(&node.install_once(&[]));
    let first = node.read("10-calico.conflist");
    assert_eq!(
        types(&node.json("10-calico.conflist")),
        ["calico", "portmap", "bandwidth", "amesh-cni"]
    );
    assert_eq!(
        node.json("10-calico.conflist")["plugins"][3]["ztunnel_socket"],
        json!(node.socket())
    );
    assert_ok(&node.install_once(&[]));
    assert_eq!(
        node.read("10-calico.conflist"),
        first,
        "a second install changed the file"
    );
}

#[test]
fn watch_puts_amesh_back_follows_a_new_primary_and_uninstalls() {
    let node = Node::new();
    node.write("10-bridge.conflist", BRIDGE);
    let mut installer = node.start(&["--uninstall-on-exit"]);
    wait_until("amesh is installed", || {
        has_amesh(&node, "10-bridge.conflist")
    });

    // The network agent restarts and writes its config again, without amesh.
    node.write("10-bridge.conflist", BRIDGE);
    wait_until("amesh is back after a rewrite", || {
        has_amesh(&node, "10-bridge.conflist")
    });
    // ... and again, replacing the file by a rename as most agents do.
    let tmp = node.dir.path().join("agent-tmp");
    std::fs::write(&tmp, BRIDGE).unwrap();
    std::fs::rename(&tmp, node.conf().join("10-bridge.conflist")).unwrap();
    wait_until("amesh is back after a replace", || {
        has_amesh(&node, "10-bridge.conflist")
    });

    // Another network plugin's config sorts first: it is the primary now.
    std::fs::write(&tmp, CILIUM).unwrap();
    std::fs::rename(&tmp, node.conf().join("05-cilium.conflist")).unwrap();
    wait_until("amesh is in the new primary", || {
        has_amesh(&node, "05-cilium.conflist")
    });
    assert!(installer.running(), "{}", installer.log());
    assert_eq!(
        types(&node.json("10-bridge.conflist")),
        ["bridge", "portmap", "amesh-cni"]
    );
    // One write per change it had to undo: its own writes and reads did not set it off again.
    let added = installer
        .log()
        .matches("added amesh-cni to the CNI chain")
        .count();
    assert_eq!(added, 4, "{}", installer.log());

    installer.sigterm();
    assert_eq!(installer.wait_exit(), 0, "{}", installer.log());
    assert_eq!(
        node.json("05-cilium.conflist"),
        serde_json::from_str::<Value>(CILIUM).unwrap()
    );
    assert_eq!(
        node.json("10-bridge.conflist"),
        serde_json::from_str::<Value>(BRIDGE).unwrap()
    );
    assert!(!node.bin().join("amesh-cni").exists());
    assert!(!node.check());
}

#[test]
fn waits_for_a_primary_and_rides_out_a_malformed_one() {
    let node = Node::new();
    let mut installer = node.start(&[]);
    wait_until("the installer says it waits", || {
        installer.log().contains("no CNI config yet")
    });
    assert!(!node.check());

    // The network agent is half-way through writing its config.
    node.write(
        "10-bridge.conflist",
        r#"{"cniVersion": "1.0.0", "plugins": [{"type": "bri"#,
    );
    wait_until("the installer reports the malformed file", || {
        installer.log().contains("10-bridge.conflist: not JSON")
    });
    assert!(
        installer.running(),
        "the installer exited on a malformed config"
    );
    node.write("10-bridge.conflist", BRIDGE);
    wait_until("amesh is installed once the file is whole", || {
        has_amesh(&node, "10-bridge.conflist")
    });

    // Without --uninstall-on-exit everything stays.
    installer.sigterm();
    assert_eq!(installer.wait_exit(), 0, "{}", installer.log());
    assert!(has_amesh(&node, "10-bridge.conflist"));
    assert!(node.bin().join("amesh-cni").is_file());
    assert!(!installer.log().contains("panicked"));
}

#[test]
fn a_conf_dir_removed_and_made_again_is_watched_again() {
    let node = Node::new();
    node.write("10-bridge.conflist", BRIDGE);
    let mut installer = node.start(&[]);
    wait_until("amesh is installed", || {
        has_amesh(&node, "10-bridge.conflist")
    });
    std::fs::remove_dir_all(node.conf()).unwrap();
    std::fs::create_dir(node.conf()).unwrap();
    node.write("10-calico.conflist", CALICO);
    // Well before the 30 s re-check: the new dir is polled, then watched.
    wait_until("amesh is in the new dir", || {
        has_amesh(&node, "10-calico.conflist")
    });
    node.write("10-calico.conflist", CALICO);
    wait_until("amesh is back after a rewrite", || {
        has_amesh(&node, "10-calico.conflist")
    });
    assert!(installer.running(), "{}", installer.log());
}

#[test]
fn malformed_configs_fail_once_naming_the_file_and_field() {
    for (text, field) in [
        (
            r#"{"name": "n", "plugins": {"type": "bridge"}}"#,
            "field `plugins` is not a list",
        ),
        (
            r#"{"name": "n", "plugins": [{"type": "bridge"}, {"ipam": {}}]}"#,
            "field `plugins[1].type`",
        ),
        (
            r#"{"name": "n", "type": ["bridge"]}"#,
            "field `type` is not a string",
        ),
        (
            r#"{"name": "n", "plugins": [{"type": "bridge"}"#,
            "not JSON",
        ),
        ("", "the file is empty"),
    ] {
        let node = Node::new();
        node.write("10-bad.conflist", text);
        node.write("20-bridge.conflist", BRIDGE);
        let out = node.install_once(&[]);
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(1), "{text}: {said}");
        let path = node.conf().join("10-bad.conflist");
        assert!(
            said.contains(&format!("CNI config {}", path.display())),
            "{said}"
        );
        assert!(said.contains(field), "{text}: {said}");
        assert!(!said.contains("panicked"), "{said}");
        // The next file is not taken instead: the runtime would fail on the bad one too.
        assert_eq!(node.read("20-bridge.conflist"), BRIDGE);
    }
}

#[test]
fn kubeconfig_is_written_from_the_service_account() {
    let node = Node::new();
    node.write("10-bridge.conflist", BRIDGE);
    let sa = node.dir.path().join("sa");
    std::fs::create_dir_all(&sa).unwrap();
    let ca = mesh::certs::generate_root("cluster.local").unwrap().ca_cert;
    std::fs::write(sa.join("ca.crt"), &ca).unwrap();
    std::fs::write(sa.join("token"), "secret-token\n").unwrap();
    let out = node
        .command(&[
            "--once",
            "--service-account-dir",
            sa.to_str().unwrap(),
            "--host-cni-conf-dir",
            "/etc/cni/net.d",
        ])
        .env("KUBERNETES_SERVICE_HOST", "10.96.0.1")
        .env("KUBERNETES_SERVICE_PORT", "6443")
        .output()
        .unwrap();
    assert_ok(&out);
    let entry = &node.json("10-bridge.conflist")["plugins"][2];
    assert_eq!(entry["kubeconfig"], "/etc/cni/net.d/amesh-cni-kubeconfig");
    let local = node.conf().join("amesh-cni-kubeconfig");
    let mode = std::fs::metadata(&local).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the kubeconfig holds a token");
    let kubeconfig: Value = serde_yaml::from_str(&node.read("amesh-cni-kubeconfig")).unwrap();
    assert_eq!(
        kubeconfig["clusters"][0]["cluster"]["server"],
        "https://10.96.0.1:6443"
    );
    assert_eq!(kubeconfig["users"][0]["user"]["token"], "secret-token");
    // The plugin's own reader takes it (server, CA, token).
    let loaded = ztunnel::cni::kube::Kubeconfig::load(&local).unwrap();
    assert!(
        format!("{loaded:?}").contains("10.96.0.1:6443"),
        "{loaded:?}"
    );

    // Uninstall takes the kubeconfig away with the entry.
    let mut cmd = node.command(&[
        "--uninstall-on-exit",
        "--service-account-dir",
        sa.to_str().unwrap(),
    ]);
    cmd.env("KUBERNETES_SERVICE_HOST", "10.96.0.1");
    let mut installer = node.spawn(cmd);
    wait_until("the installer has done its first pass", || {
        installer.log().contains("amesh-cni is in the CNI chain")
    });
    installer.sigterm();
    assert_eq!(installer.wait_exit(), 0, "{}", installer.log());
    assert!(!local.exists(), "the kubeconfig is still there");
    assert!(!has_amesh(&node, "10-bridge.conflist"));
}

/// What the runtime hands the plugin for one entry of the list: the entry plus the list's
/// `name` and `cniVersion`.
fn runtime_conf(list: &Value, entry: &Value) -> String {
    let mut conf = entry.clone();
    conf["name"] = list["name"].clone();
    conf["cniVersion"] = list["cniVersion"].clone();
    conf.to_string()
}

#[test]
fn the_installed_chain_drives_the_installed_plugin() {
    let node = Node::new();
    node.write("10-bridge.conflist", BRIDGE);
    assert_ok(&node.install_once(&[]));
    let plugin = node.bin().join("amesh-cni");
    let list = node.json("10-bridge.conflist");
    let entry = list["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["type"] == "amesh-cni")
        .unwrap()
        .clone();

    let version = Command::new(&plugin)
        .env("CNI_COMMAND", "VERSION")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(version.status.success());
    let version: Value = serde_json::from_slice(&version.stdout).unwrap();
    assert!(version["supportedVersions"]
        .as_array()
        .unwrap()
        .contains(&list["cniVersion"]));

    // A stand-in ztunnel on the socket the installer wrote: the plugin's DEL reaches it.
    let listener = UnixListener::bind(node.socket()).unwrap();
    let agent = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line).unwrap();
        (&stream)
            .write_all(b"{\"result\":\"ok\",\"captured\":false,\"message\":\"removed\"}\n")
            .unwrap();
        line
    });
    let mut del = Command::new(&plugin)
        .env("CNI_COMMAND", "DEL")
        .env("CNI_CONTAINERID", "c1")
        .env("CNI_NETNS", "/var/run/netns/gone")
        .env("CNI_IFNAME", "eth0")
        .env(
            "CNI_ARGS",
            "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-0;K8S_POD_UID=u-1",
        )
        .env("CNI_PATH", node.bin())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    del.stdin
        .take()
        .unwrap()
        .write_all(runtime_conf(&list, &entry).as_bytes())
        .unwrap();
    let out = del.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let request: Value = serde_json::from_str(&agent.join().unwrap()).unwrap();
    assert_eq!(
        request,
        json!({"op": "del", "container_id": "c1", "uid": "u-1", "name": "cart-0", "namespace": "shop"})
    );
}

#[test]
fn without_cni_command_and_arguments_it_still_is_the_plugin() {
    let out = Command::new(BIN)
        .env_remove("CNI_COMMAND")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err: Value = serde_json::from_slice(&out.stdout).unwrap();
    // The plugin's answer to a runtime that sent no configuration, not the installer's usage.
    assert_eq!(err["code"], 6, "{err}");
    // With CNI_COMMAND set, arguments are not parsed as the installer's.
    let out = Command::new(BIN)
        .arg("install")
        .env("CNI_COMMAND", "VERSION")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("supportedVersions"));
}

/// The defaults are the DaemonSet's mounts (the host's dirs under /host) and the host's own
/// paths for what the plugin reads.
#[test]
fn defaults_point_at_the_host_mounts() {
    let out = Command::new(BIN)
        .args(["install", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for default in [
        "/host/opt/cni/bin",
        "/host/etc/cni/net.d",
        "/etc/cni/net.d",
        "/var/run/ztunnel/amesh-cni.sock",
    ] {
        assert!(help.contains(default), "{default} missing from:\n{help}");
    }
}
